"""Which engine a worker builds: ``auto`` resolved on the worker's own node, then the engine.

The implementations import :mod:`memrl.rollout.engine` (the interface) and
:mod:`memrl.rollout.availability` (the checks), never this module, so the dependency runs one
way; they are imported only when built, so choosing an engine does not import transformers
or vLLM.
"""

from __future__ import annotations

from typing import Any, Literal

from memrl.rollout.availability import check_engine, vllm_available
from memrl.rollout.engine import GenerationEngine


def resolve_engine_kind(kind: str) -> Literal["hf", "vllm"]:
    """``"auto"`` becomes ``"vllm"`` whenever a working vLLM is installed (its CPU build, or
    the CUDA build with a visible GPU), else ``"hf"``; the chosen engine is then checked
    (:func:`check_engine`)."""
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind not in ("hf", "vllm"):
        raise ValueError(f"engine kind {kind!r} is not one of 'auto', 'hf', 'vllm'")
    check_engine(kind)
    return kind


def make_engine(
    kind: Literal["auto", "hf", "vllm"], model_path: str, **engine_kwargs: Any
) -> GenerationEngine:
    """Build a generation engine for the Hugging Face model folder ``model_path``.

    ``kind`` is resolved by ``resolve_engine_kind``. ``engine_kwargs`` go to the chosen
    engine's constructor; with ``"auto"`` pass only keywords both accept (``dtype``, ``seed``,
    ``add_special_tokens``).
    """
    if resolve_engine_kind(kind) == "hf":
        from memrl.rollout.hf_engine import HFEngine

        return HFEngine(model_path, **engine_kwargs)
    from memrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model_path, **engine_kwargs)
