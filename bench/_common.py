"""What the throughput benchmarks share: one-thread set-up, the embedded default's model and
prompts, rollout workers built as the trainer builds them, summary statistics, the compact
table and the JSON report.

Import this module before anything that imports torch: it sets one OpenMP/MKL thread per
process (on 2 cores two 2-thread torch processes ran 22x slower than 1-thread ones) and the
offline hub switches.
"""

from __future__ import annotations

import os

for _key, _value in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                     "HF_DATASETS_OFFLINE": "1"}.items():
    os.environ.setdefault(_key, _value)

import json  # noqa: E402
import platform  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from memrl.config import Config, load_config  # noqa: E402
from memrl.model.replicas import ARCHITECTURES, build_replica  # noqa: E402
from memrl.prompts import record_prompt  # noqa: E402
from memrl.report.table import text_table  # noqa: E402
from memrl.rollout.engine import completion_mask, load_tokenizer, pad_rows  # noqa: E402
from memrl.tasks import build_task  # noqa: E402
from memrl.tasks.base import Task  # noqa: E402
from memrl.train.data_stream import PromptStream  # noqa: E402
from memrl.train.setup import cache_root, prepare_model  # noqa: E402
from memrl.types import Record  # noqa: E402

# Shapes of the Llama-shaped random models: 34m for CPU, 1.5b for GPU-sized measurements
# (Qwen2.5-1.5B's dimensions; attention_bias adds Qwen2's q/k/v biases and an o_proj bias Qwen2
# lacks). The paper models' own architectures are the replicas (``--model-size qwen2``, ...).
RANDOM_SHAPES: dict[str, dict[str, int]] = {
    # Hidden 512 x 8 layers (33.6M parameters, vocabulary of the 512-token BPE): on CPU the
    # smallest shape where generation, not per-call overhead, dominates.
    "34m": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 512},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151_936},
}
MODEL_SIZES = ("tiny", *RANDOM_SHAPES, *ARCHITECTURES)


def one_thread() -> None:
    """One torch intra-op thread in this process (the bare baselines and TRL run here)."""
    torch.set_num_threads(1)


def bench_config(overrides: Sequence[str] = ()) -> Config:
    """The embedded default (``configs/default.yaml``) with dotted ``key=value`` overrides."""
    return load_config(None, list(overrides))


def prepare(cfg: Config, model_size: str = "tiny", dtype: str = "float32") -> tuple[Task, str, Any]:
    """The task, the model folder and its tokenizer (left padding).

    ``model_size="tiny"``: the config's model (the tiny one is built once and cached, as
    ``memrl train`` does); otherwise a random model of that size or architecture
    (:func:`random_model`) saved in ``dtype``."""
    task = build_task(cfg)
    if model_size == "tiny":
        model_path = prepare_model(cfg, task)
    else:
        model_path = random_model(model_size, cfg, task, dtype)
    return task, model_path, load_tokenizer(model_path)


def stream_records(task: Task, cfg: Config, count: int) -> list[Record]:
    """The first ``count`` training records in the order ``memrl train`` takes them."""
    return PromptStream(task.dataset("train"), seed=cfg.seed).next_batch(count)


def render_prompts(task: Task, tokenizer: Any, records: Sequence[Record], cfg: Config) -> list[str]:
    """Chat prompts of ``records``, rendered as the trainer renders them."""
    return [record_prompt(task, tokenizer, r, num_shots=cfg.task.num_shots, seed=cfg.seed)
            for r in records]


def count_generated_tokens(completion_ids: torch.Tensor, generated: torch.Tensor,
                           eos_ids: Sequence[int]) -> int:
    """Generated tokens of a batch, counted as the rollout worker counts them: every produced
    token up to and including the first EOS (``memrl.rollout.engine.completion_mask``).

    ``completion_ids`` [N, L] int64; ``generated`` [N, L] marks positions the engine produced
    (all ones for ``transformers.generate``)."""
    return int(completion_mask(completion_ids, generated, eos_ids).sum())


def count_generated_token_lists(rows: Sequence[Sequence[int]], eos_ids: Sequence[int]) -> int:
    """:func:`count_generated_tokens` for ragged per-completion token lists (vLLM outputs)."""
    ids, generated = pad_rows([list(r) for r in rows], 0, side="right", dtype=torch.int64)
    return count_generated_tokens(ids, generated, eos_ids)


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Median, p90 (linear interpolation), mean, min and max of ``values`` (seconds or rates)."""
    if len(values) == 0:
        raise ValueError("summarise got no values: run more repetitions or steps")
    array = np.asarray(values, dtype=float)
    return {"median": float(np.median(array)), "p90": float(np.percentile(array, 90)),
            "mean": float(array.mean()), "min": float(array.min()), "max": float(array.max()),
            "n": int(array.size)}


def ratio(numerator: float, denominator: float, what: str) -> float:
    """``numerator / denominator``; ``what`` names the ratio in the error for a zero or
    negative denominator."""
    if not denominator > 0:
        raise ValueError(f"{what}: denominator {denominator!r} must be > 0")
    return float(numerator) / float(denominator)


T = TypeVar("T")


def alternating_rounds(rows: dict[str, Callable[[int], T]], rounds: int,
                       warmup: int = 0) -> dict[str, list[T]]:
    """Run every row once per round, in ``rows``' order, for ``warmup + rounds`` rounds; the
    results of each row per round, the ``warmup`` first rounds dropped.

    Each row is called with the round's index (0-based, warm-ups included: a seed or the
    round's data). Rows take turns within each round so that a drift of a shared machine's
    speed hits them alike; compare rows round by round (:func:`ratio_rounds`)."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"alternating_rounds: rounds {rounds} must be >= 1 and warmup {warmup} >= 0")
    results: dict[str, list[T]] = {name: [] for name in rows}
    for index in range(warmup + rounds):
        for name, row in rows.items():
            value = row(index)
            if index >= warmup:
                results[name].append(value)
    return results


def ratio_rounds(numerators: Sequence[float], denominators: Sequence[float],
                 what: str) -> dict[str, Any]:
    """Round-by-round ratios of two rows (:func:`alternating_rounds`): :func:`summarise` of
    them (median, min, max = the range) plus ``per_round``; ``what`` names the ratio in errors."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{what}: {len(numerators)} numerator rounds but {len(denominators)} "
                         "denominator rounds")
    per_round = [ratio(n, d, what) for n, d in zip(numerators, denominators)]
    return {**summarise(per_round), "per_round": per_round}


def median_range(summary: dict[str, Any], digits: int = 2) -> str:
    """``"median (min-max)"`` of a :func:`summarise` result, ``digits`` decimals."""
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A compact fixed-width table: floats below 100 with 3 decimals, larger ones rounded;
    first column left-aligned, the others right-aligned."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    return text_table([list(map(str, headers)), *cells], align="<" + ">" * (len(headers) - 1))


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    """Write ``figures`` to ``path`` (indented JSON) when a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2, default=str))


def random_model_config(size: str, vocab_size: int | None = None) -> Any:
    """A ``LlamaConfig`` with the dimensions of ``RANDOM_SHAPES[size]`` (tied embeddings)."""
    from transformers import LlamaConfig

    if size not in RANDOM_SHAPES:
        raise ValueError(f"--model-size {size!r}: choose one of {sorted(RANDOM_SHAPES)} or tiny")
    shape = dict(RANDOM_SHAPES[size])
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    return LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=True,
                       attention_bias=True, bos_token_id=None)


def random_model(size: str, cfg: Config, task: Task, dtype: str) -> str:
    """Folder of a randomly initialised model of ``size`` (no download), built once under the
    memrl cache: a paper model's architecture at full size (``qwen2``, ``llama3``, ``falcon3``:
    :func:`memrl.model.replicas.build_replica`) or a Llama of :data:`RANDOM_SHAPES`. Its tokenizer
    is a small BPE trained on the task's text (ids fit any vocab); the weights are saved in
    ``dtype`` (``float32`` or ``bfloat16``)."""
    from transformers import GenerationConfig, LlamaForCausalLM

    from memrl.model.tiny import train_bpe_tokenizer

    folder = cache_root(cfg) / f"bench-random-{size}-{dtype}"
    if (folder / "config.json").is_file():
        return str(folder)
    staging = folder.with_name(folder.name + ".partial")
    records = [task.dataset("train")[i] for i in range(200)]
    texts = [task.system_prompt] + [r.question for r in records]
    if size in ARCHITECTURES:
        build_replica(size, staging, full_size=True, dtype=dtype, texts=texts, seed=cfg.seed)
        staging.rename(folder)
        return str(folder)
    tokenizer = train_bpe_tokenizer(texts, 512)
    config = random_model_config(size)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return str(folder)


def add_model_arguments(parser: Any) -> None:
    """Add ``--model-size``, ``--dtype``, ``--set`` and ``--json`` to an ``argparse`` parser
    (the options the rollout and weight-sync benchmarks share)."""
    parser.add_argument("--model-size", default="tiny", choices=MODEL_SIZES,
                        help="tiny: the embedded default's model; else a random model (qwen2, "
                        "llama3, falcon3: a paper model's architecture at full size; 34m: a "
                        "CPU-sized Llama; 1.5b: a GPU-sized one)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weights of a random model; default bfloat16 on GPU, else float32")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="config overrides, dotted.key=value")
    parser.add_argument("--json", type=Path, default=None)
