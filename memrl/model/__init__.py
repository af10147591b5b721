"""Policy models: the offline tiny Llama, its supervised warm start, and loading by name or folder."""

from memrl.model.loading import ModelUnavailableError, load_policy
from memrl.model.tiny import build_tiny_model, train_bpe_tokenizer
from memrl.model.warmstart import cached_tiny_model, warm_start

__all__ = [
    "ModelUnavailableError",
    "build_tiny_model",
    "cached_tiny_model",
    "load_policy",
    "train_bpe_tokenizer",
    "warm_start",
]
