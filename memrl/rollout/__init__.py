"""Rollout generation: engines (transformers, vLLM) behind one interface."""

from memrl.rollout.availability import vllm_available
from memrl.rollout.engine import GenerationEngine, SamplingSettings
from memrl.rollout.factory import make_engine, resolve_engine_kind

__all__ = [
    "GenerationEngine",
    "SamplingSettings",
    "make_engine",
    "resolve_engine_kind",
    "vllm_available",
]
