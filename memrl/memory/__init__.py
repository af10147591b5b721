"""Episodic memories and the Memory-R / Memory-R+ intrinsic rewards (pure Python + FAISS).

Modules, one job each: ``settings`` (the typed settings), ``embedder`` (text → unit vectors,
batched and cached), ``index`` (FAISS key search, CPU or GPU), ``episodic`` (one memory: keys
with FIFO values), ``rewards`` (the pure reward math), ``normaliser`` (windows, warm-up,
annealing), ``shard`` (both memories and the two scoring orders), ``rewarder`` (the whole
pipeline, snapshots, metrics), ``snapshot`` (the verified on-disk format), ``inspect`` (the
human-readable report). The Ray service is ``actors/memory.py``.
"""

from memrl.memory.embedder import HashingEmbedder, SentenceTransformerEmbedder, make_embedder
from memrl.memory.rewarder import MemoryRewarder
from memrl.memory.settings import MemorySettings
from memrl.memory.snapshot import SnapshotError

__all__ = [
    "HashingEmbedder",
    "MemoryRewarder",
    "MemorySettings",
    "SentenceTransformerEmbedder",
    "SnapshotError",
    "make_embedder",
]
