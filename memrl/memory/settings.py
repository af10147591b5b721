"""Settings of the episodic memory and its intrinsic rewards (one typed dataclass).

The config's ``memory:`` section (:class:`memrl.config.MemoryConfig`) is the one source of the
defaults: the fields it holds have none here, and :meth:`MemorySettings.from_config` copies them
by name (:meth:`~MemorySettings.default` and :meth:`~MemorySettings.reference` build the default
and the official-code settings from it). Every field is documented below with its unit. ``mode``
picks between the paper's definition (``paper``) and a switch-by-switch reproduction of the
official code (``reference``); see docs/method.md ("Episodic memory") and
:mod:`memrl.memory.rewarder` for what differs. The weights λ_s and λ_e of the two rewards are
not memory settings: they belong to the total reward (:mod:`memrl.rewards.total`).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from memrl.config import MemoryConfig
from memrl.memory.embedder import EMBEDDER_BACKENDS
from memrl.official import OFFICIAL_MEMORY

MODES = ("paper", "reference")
WARMUP_UNITS = ("steps", "failure_keys")
DEVICES = ("auto", "cpu", "cuda")
# Written into snapshots by earlier versions; read and ignored (λ is the total reward's).
RETIRED_FIELDS = ("lambda_exploit", "lambda_explore")


@dataclass(frozen=True)
class MemorySettings:
    """Everything that shapes the two memories and the rewards they give.

    Fields:
        mode: ``paper`` (score the whole step against the memory as it was before the step,
            then insert; min-max with epsilon) or ``reference`` (insert then score one response
            at a time, normalisation quirks of the official code).
        k: nearest stored questions retrieved per lookup (paper: 1 on GSM8K, 20 on AI-MO).
        capacity_keys: questions kept per memory (split evenly across shards when sharded);
            the oldest question is evicted when full.
        capacity_values: responses kept per question (FIFO).
        warmup: the explore reward is 0 until this many ``warmup_unit`` have passed.
        warmup_unit: ``steps`` (training steps, the paper's "e.g. 50") or ``failure_keys``
            (distinct questions stored in the failure memory, the official code's 500).
        anneal_rate: multiplies the explore reward once per step after warm-up (paper mode) or
            once per normalised explore reward (reference mode); 1.0 turns annealing off.
        window: raw rewards kept per memory for min-max normalisation.
        use_explore: Memory-R+ (True: failure memory and explore reward) or Memory-R (False).
        embedder: ``all-MiniLM-L6-v2`` (offline copy), another sentence-transformers name or
            local path, or ``hash`` (deterministic, model-free; for tests and dry runs).
        embedder_backend: ``onnx`` (default: the same model exported once and run by
            onnxruntime on CPU; same embeddings to float32 rounding, 6-20 % less time per text
            (see :mod:`memrl.memory.embedder`); torch with a warning when onnxruntime or onnx
            is missing) or ``torch``.
        device: ``auto`` (GPU when torch and a GPU build of FAISS see one), ``cpu`` or ``cuda``.
        value_text_chars: characters of each stored reasoning text kept for inspection.
        eps: added to ``max - min`` in paper-mode normalisation.
        question_cache_size: question embeddings cached across steps (LRU).
        encode_batch_size: texts per forward pass of the encoder. Small batches win on CPU
            for reasoning-length texts (less padding, activations stay in cache): measured
            24 ms/text at 8-16 vs 49 ms/text at 96 for ~64-token texts, 1 thread (torch); the
            ONNX backend ran 19.9 ms/text at 8 vs 23.6 at 16.
    """

    # The config's keys (memory.<name>): required here, their defaults are the config's.
    mode: str
    k: int
    capacity_keys: int
    capacity_values: int
    warmup: int
    warmup_unit: str
    anneal_rate: float
    window: int
    use_explore: bool  # from the method
    embedder: str
    embedder_backend: str
    value_text_chars: int
    # Library-only settings (no config key).
    eps: float = 1e-8
    device: str = "auto"
    question_cache_size: int = 100_000
    encode_batch_size: int = 8

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("warmup_unit", self.warmup_unit, WARMUP_UNITS)
        _choice("device", self.device, DEVICES)
        _choice("embedder_backend", self.embedder_backend, EMBEDDER_BACKENDS)
        for name in ("k", "capacity_keys", "capacity_values", "window", "encode_batch_size"):
            _at_least(name, getattr(self, name), 1)
        for name in ("warmup", "value_text_chars", "question_cache_size"):
            _at_least(name, getattr(self, name), 0)
        if not 0.0 < self.anneal_rate <= 1.0:
            raise ValueError(f"memory.anneal_rate = {self.anneal_rate!r}: must be in (0, 1]")
        if not self.eps >= 0.0:
            raise ValueError(f"memory.eps = {self.eps!r}: must be >= 0")
        if not isinstance(self.embedder, str) or not self.embedder:
            raise ValueError(f"memory.embedder = {self.embedder!r}: must be a non-empty string")

    @classmethod
    def from_config(cls, section: MemoryConfig, *, use_explore: bool,
                    **overrides: Any) -> MemorySettings:
        """The settings of a config's ``memory`` section (every field of the same name), the
        method's ``use_explore``, then ``overrides`` (any field, e.g. ``device``)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in section.model_dump().items() if key in known}
        return cls.from_dict({**values, "use_explore": use_explore, **overrides})

    @classmethod
    def default(cls, **overrides: Any) -> MemorySettings:
        """The default config's Memory-R+ memory (:class:`memrl.config.MemoryConfig`'s
        defaults), then ``overrides``."""
        return cls.from_config(MemoryConfig(), **{"use_explore": True, **overrides})

    @classmethod
    def reference(cls, **overrides: Any) -> MemorySettings:
        """The official code's Memory-R+ run (:data:`memrl.official.OFFICIAL_MEMORY`: reference
        mode, K=1, N=10,000, L=100, window 100, explore after 500 distinct failure questions, no
        annealing) over the config's defaults, then ``overrides``. For its Memory-R run pass
        ``use_explore=False, capacity_values=1000``."""
        return cls.from_config(MemoryConfig(**OFFICIAL_MEMORY), **{"use_explore": True, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for snapshots and Ray actor arguments)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemorySettings:
        """Inverse of :meth:`to_dict`; unknown keys are refused by name, missing ones named, and
        the retired λ fields of older snapshots (:data:`RETIRED_FIELDS`) ignored."""
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in data.items() if key not in RETIRED_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown memory setting(s) {unknown}; known: {sorted(known)}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"memory setting(s) {missing} missing")
        return cls(**data)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"memory.{name} = {value!r}: must be one of {list(allowed)}")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"memory.{name} = {value!r}: must be an integer >= {low}")
