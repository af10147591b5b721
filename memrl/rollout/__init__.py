"""Rollout generation: engines (transformers, vLLM) behind one interface."""

from memrl.rollout.engine import (
    GenerationEngine,
    SamplingSettings,
    make_engine,
    resolve_engine_kind,
    vllm_available,
)

__all__ = [
    "GenerationEngine",
    "SamplingSettings",
    "make_engine",
    "resolve_engine_kind",
    "vllm_available",
]
