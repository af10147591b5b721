"""Exact inner-product search over a fixed-capacity table of question keys (FAISS, CPU or GPU).

Keys live in slots ``0 .. size-1`` of a dense table. A memory only ever appends (``slot ==
size``) or overwrites the slot of the key it evicts, so the table has no holes and an eviction
costs one row write, never a rebuild. Search is FAISS brute force over the table
(``faiss.knn`` on CPU; ``faiss.knn_gpu`` on a CUDA tensor when a GPU is used) — FAISS's GPU
indexes cannot remove or update vectors, and its brute-force kernels are the same ones its flat
indexes use.
"""

from __future__ import annotations

import numpy as np

import faiss

_INITIAL_ROWS = 1024


def gpu_available() -> bool:
    """True when a GPU build of FAISS sees a GPU and torch can place tensors on it.

    The GPU build of FAISS imports fine on machines without a GPU, so the GPU count is what
    decides, not the import."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() <= 0:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when :func:`gpu_available`, else ``cpu``; ``cuda`` without a GPU
    raises."""
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if not gpu_available():
            raise RuntimeError(
                "memory.device = 'cuda' but no GPU is usable by FAISS (needs faiss-gpu and a "
                "visible CUDA device); use 'auto' or 'cpu'"
            )
        return "cuda"
    if device == "auto":
        return "cuda" if gpu_available() else "cpu"
    raise ValueError(f"memory.device = {device!r}: must be 'auto', 'cpu' or 'cuda'")


class KeyIndex:
    """Unit-vector keys in slots, searched by inner product (= cosine similarity)."""

    def __init__(self, dim: int, capacity: int, device: str = "cpu"):
        self.dim = dim
        self.capacity = capacity
        self.device = resolve_device(device)
        self.size = 0
        rows = min(capacity, _INITIAL_ROWS)
        if self.device == "cuda":
            import faiss.contrib.torch_utils  # noqa: F401  (lets faiss.knn_gpu take CUDA tensors)
            import torch

            self._torch = torch
            self._res = faiss.StandardGpuResources()
            self._table = torch.zeros((rows, dim), dtype=torch.float32, device="cuda")
        else:
            self._table = np.zeros((rows, dim), dtype=np.float32)

    def write(self, slot: int, vec: np.ndarray) -> None:
        """Store ``vec`` ([dim] float32) in ``slot``: ``slot == size`` appends one key, a smaller
        slot overwrites that key in place."""
        if not 0 <= slot <= self.size or slot >= self.capacity:
            raise IndexError(f"slot {slot} outside 0..{min(self.size, self.capacity - 1)}")
        if slot == self.size:
            self._ensure_rows(slot + 1)
            self.size += 1
        if self.device == "cuda":  # np.array copies: inputs may be read-only Ray views
            self._table[slot] = self._torch.from_numpy(np.array(vec, dtype=np.float32)).cuda()
        else:
            self._table[slot] = vec

    def write_all(self, vecs: np.ndarray) -> None:
        """Replace the whole table by ``vecs`` ([size, dim]); used when loading a snapshot."""
        if vecs.shape[0] > self.capacity or (vecs.ndim == 2 and vecs.shape[1] != self.dim):
            raise ValueError(
                f"keys of shape {vecs.shape} do not fit capacity {self.capacity}, dim {self.dim}"
            )
        self.size = 0
        self._ensure_rows(max(vecs.shape[0], 1))
        if self.device == "cuda":
            self._table[: vecs.shape[0]] = self._torch.from_numpy(np.array(vecs, np.float32)).cuda()
        else:
            self._table[: vecs.shape[0]] = vecs
        self.size = vecs.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar keys of each query.

        Args:
            queries: [Q, dim] float32 unit vectors.
        Returns:
            sims [Q, k] float32 cosine similarities, descending, ``-inf`` where fewer than ``k``
            keys exist; slots [Q, k] int64, ``-1`` there.
        """
        nq = queries.shape[0]
        sims = np.full((nq, k), -np.inf, dtype=np.float32)
        slots = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, self.size)
        if nq == 0 or kk == 0:
            return sims, slots
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.device == "cuda":
            found_d, found_i = faiss.knn_gpu(
                self._res,
                self._torch.from_numpy(np.array(queries)).cuda(),
                self._table[: self.size],
                kk,
                metric=faiss.METRIC_INNER_PRODUCT,
            )
            found_d, found_i = found_d.cpu().numpy(), found_i.cpu().numpy()
        else:
            found_d, found_i = faiss.knn(
                queries, self._table[: self.size], kk, metric=faiss.METRIC_INNER_PRODUCT
            )
        sims[:, :kk] = found_d
        slots[:, :kk] = found_i
        return sims, slots

    def vectors(self) -> np.ndarray:
        """Copy of the stored keys, [size, dim] float32, in slot order."""
        if self.device == "cuda":
            return self._table[: self.size].cpu().numpy().copy()
        return self._table[: self.size].copy()

    def _ensure_rows(self, rows: int) -> None:
        have = self._table.shape[0]
        if rows <= have:
            return
        new_rows = min(self.capacity, max(rows, 2 * have))
        if self.device == "cuda":
            grown = self._torch.zeros((new_rows, self.dim), dtype=self._torch.float32, device="cuda")
        else:
            grown = np.zeros((new_rows, self.dim), dtype=np.float32)
        grown[:have] = self._table
        self._table = grown
