"""Exact inner-product search over a fixed-capacity table of question keys (FAISS, CPU or GPU).

Keys live in slots ``0 .. size-1`` of a dense table. A memory only ever appends (``slot ==
size``) or overwrites the slot of the key it evicts, so the table has no holes and an eviction
costs one row write, never a rebuild. Search is FAISS brute force over the table
(``faiss.knn`` on CPU; ``faiss.knn_gpu`` on a CUDA tensor when a GPU is used) — FAISS's GPU
indexes cannot remove or update vectors, and its brute-force kernels are the same ones its flat
indexes use.

GPU use is probed, not assumed: a FAISS wheel without kernels for the device's compute
capability (e.g. one built for sm_70/sm_80 only, on an H100/H200) aborts the whole process on
its first search ("no kernel image is available"), so :func:`gpu_available` first runs one
small search in a child process and falls back to the CPU index, with a warning, when it fails.
Every GPU index of a process shares one ``StandardGpuResources`` with a bounded scratch size.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import subprocess
import sys
from typing import Any

import faiss
import numpy as np

_INITIAL_ROWS = 1024
# FAISS's GPU k-selection handles at most this many neighbours per query.
GPU_MAX_K = 2048
# Scratch memory of the shared GPU resources: FAISS tiles brute-force search to fit it (its
# default, ~1.5 GiB per StandardGpuResources, is far beyond a 0.1-GPU share beside vLLM).
GPU_TEMP_MEMORY_BYTES = 256 * 1024 * 1024
_PROBE_TIMEOUT_S = 120.0
_PROBE = """
import faiss, faiss.contrib.torch_utils, torch
res = faiss.StandardGpuResources()
keys = torch.nn.functional.normalize(torch.randn(64, 8, device="cuda"), dim=1)
d, i = faiss.knn_gpu(res, keys[:4], keys, 2, metric=faiss.METRIC_INNER_PRODUCT)
torch.cuda.synchronize()
assert i[:, 0].tolist() == [0, 1, 2, 3], i
print("ok")
"""

logger = logging.getLogger(__name__)


def faiss_distributions() -> list[str]:
    """Installed distributions that provide the ``faiss`` package (exactly one is sane: they
    all write the same ``faiss/`` folder, and which module loads is then an accident)."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("faiss"):
            files = dist.files or []
            if any(str(f).startswith("faiss/") for f in files):
                names.add(name)
    return sorted(names)


@functools.lru_cache(maxsize=1)
def probe_gpu_search() -> str | None:
    """None when one FAISS GPU search runs correctly on this machine's device 0, else why not.

    Runs in a child process (cached for this process): an unsupported device aborts the
    process that tries, which must not be this one."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"the FAISS GPU probe did not finish within {_PROBE_TIMEOUT_S:g} s"
    if done.returncode == 0 and done.stdout.strip().endswith("ok"):
        return None
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"a FAISS GPU search failed (exit {done.returncode}): {' | '.join(tail)}"


def gpu_unavailable_reason() -> str | None:
    """None when the key index can run on the GPU; else why not (no GPU build of FAISS, no
    visible GPU, or a build whose kernels do not run on this device)."""
    if not hasattr(faiss, "StandardGpuResources"):
        installed = faiss_distributions()
        if len(installed) > 1:
            return (
                f"the loaded FAISS module has no GPU support although {installed} are all "
                "installed (they overwrite each other's faiss/ folder): uninstall all of them, "
                "then install exactly one"
            )
        return f"the installed FAISS ({', '.join(installed) or 'faiss'}) has no GPU support"
    if faiss.get_num_gpus() <= 0:  # the GPU build imports fine without a GPU: count them
        return "FAISS sees no GPU"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    reason = probe_gpu_search()
    if reason is not None:
        major, minor = torch.cuda.get_device_capability(0)
        return (
            f"{reason}; the installed FAISS build ({', '.join(faiss_distributions()) or 'faiss'}) "
            f"has no kernels for this GPU (compute capability {major}.{minor}): install one "
            f"built for it (faiss-gpu-cu12-cuvs has sm_90 code)"
        )
    return None


def gpu_available() -> bool:
    """True when a GPU build of FAISS sees a GPU, torch can place tensors on it, and a probe
    search runs there (see :func:`gpu_unavailable_reason`)."""
    return gpu_unavailable_reason() is None


@functools.lru_cache(maxsize=1)
def shared_gpu_resources() -> faiss.StandardGpuResources:
    """The process's one ``StandardGpuResources`` (scratch capped at GPU_TEMP_MEMORY_BYTES)."""
    res = faiss.StandardGpuResources()
    res.setTempMemory(GPU_TEMP_MEMORY_BYTES)
    return res


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when :func:`gpu_available`, else ``cpu``; ``cuda`` without a GPU
    raises."""
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"memory.device = 'cuda' but no GPU is usable by FAISS: {reason}; use 'auto' "
                "(CPU fallback) or 'cpu'"
            )
        return "cuda"
    if device == "auto":
        reason = gpu_unavailable_reason()
        if reason is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            # A GPU build on a GPU machine that cannot search there: say so, then use the CPU.
            logger.warning("memory key index on CPU: %s", reason)
        return "cuda" if reason is None else "cpu"
    raise ValueError(f"memory.device = {device!r}: must be 'auto', 'cpu' or 'cuda'")


def check_gpu_k(k: int) -> None:
    """Refuse ``k`` neighbours beyond FAISS GPU's limit (it would fail mid-run, once that many
    keys are stored)."""
    if k > GPU_MAX_K:
        raise ValueError(
            f"memory.k = {k} exceeds FAISS GPU's limit of {GPU_MAX_K} neighbours per query: "
            f"use memory.k <= {GPU_MAX_K}, or the CPU index (memory.num_gpus = 0)"
        )


class KeyIndex:
    """Unit-vector keys in slots, searched by inner product (= cosine similarity)."""

    def __init__(self, dim: int, capacity: int, device: str = "cpu"):
        self.dim = dim
        self.capacity = capacity
        self.device = resolve_device(device)
        self.size = 0
        rows = min(capacity, _INITIAL_ROWS)
        # [rows, dim] float32: a CUDA tensor when the device is cuda, else a NumPy array (no
        # torch import on CPU), so typed by neither
        self._table: Any
        if self.device == "cuda":
            import faiss.contrib.torch_utils  # noqa: F401  (lets faiss.knn_gpu take CUDA tensors)
            import torch

            self._torch = torch
            self._res = shared_gpu_resources()
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
            check_gpu_k(kk)
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
