"""One command for a short GPU loan: every GPU path of memrl, checked within 12 minutes.

    python -m bench.gpu_smoke [--json runs/gpu_smoke.json] [--budget-s 720]

Needs no internet: the models are random ones of the paper models' architectures at full size,
built from their configs alone (``memrl.model.replicas``, with the tiny builder's tokenizer).
Parts, each a child process with its own time limit, run in this order:

1. ``gpu_tests``: every ``gpu``-marked test (``pytest -m gpu``);
2. ``faiss_gpu``: the memory's key index on the GPU, 1M keys, 256-query batches, p50/p99
   (on CPU the same search over 20k keys runs instead, labelled so);
3. ``one_gpu_plan``: ``memrl plan`` of the one-GPU paper config against one 80 GiB GPU
   (runs everywhere: it needs no device);
4. ``paper_5_steps``: 5 steps of that config (vLLM on the GPU, DeepSpeed on NCCL, FAISS GPU);
5. ``paper_archs``: one ``memrl train`` step of each paper architecture at full size
   (Qwen2.5-0.5B, Llama-3.2-1B, Falcon3-1B) in bfloat16: the learner and a vLLM worker on the
   GPU, the step's weights published and loaded, verified; "does each paper model train and
   sync" (the embedded arith task: no data needed);
6. ``weight_sync``: learner -> vLLM weight sync of Qwen2.5-0.5B (``bench.weight_sync``);
7. ``vllm_tokens``: tokens/s of memrl's vLLM worker vs bare vLLM (``bench.rollout``).

Without a CUDA GPU the CUDA parts are reported as ``skipped`` with the reason, never failed.
Prints one table and writes every figure as JSON. Exit code 1 when a part that ran failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memrl.report.table import text_table

ROOT = Path(__file__).resolve().parent.parent
ONE_GPU_CONFIG = "configs/gsm8k_qwen2.5-0.5b_memoryr_plus_official_1gpu.yaml"
GSM8K_ENV = "MEMRL_GSM8K_DIR"  # folder with train.jsonl / test.jsonl (no hub on a loan)


@dataclass
class Part:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


def cuda_reason() -> str | None:
    """None when a CUDA GPU is usable here, else why not."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA GPU on this machine"
    return None


def _child(args: list[str], timeout_s: float) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout_s:.0f} s"
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def part_gpu_tests(timeout_s: float) -> Part:
    reason = cuda_reason()
    if reason:
        return Part("gpu_tests", "skipped", 0.0, reason)
    rc, out = _child([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], timeout_s)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return Part("gpu_tests", "ok" if rc == 0 else "failed", 0.0, last)


def part_faiss(timeout_s: float) -> Part:
    """Batched top-1 search latency of the memory's key index (GPU when usable)."""
    import numpy as np

    from memrl.memory.index import KeyIndex, gpu_unavailable_reason

    reason = cuda_reason() or gpu_unavailable_reason()
    device, keys = ("cuda", 1_000_000) if reason is None else ("cpu", 20_000)
    rng = np.random.default_rng(0)
    index = KeyIndex(384, keys, device)
    for start in range(0, keys, 100_000):
        chunk = rng.standard_normal((min(100_000, keys - start), 384)).astype(np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        if start == 0:
            index.write_all(chunk)
        else:
            for j, vec in enumerate(chunk):
                index.write(start + j, vec)
    queries = rng.standard_normal((256, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index.search(queries, 1)  # warm-up
    times = []
    deadline = time.monotonic() + min(timeout_s, 60.0)
    while len(times) < (50 if device == "cuda" else 10) and time.monotonic() < deadline:
        t = time.perf_counter()
        index.search(queries, 1)
        times.append(1000 * (time.perf_counter() - t))
    figures = {"device": device, "keys": keys, "queries": 256, "repeats": len(times),
               "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}
    summary = f"{device}, {keys:,} keys x 256 queries: p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
    if reason is not None:
        summary += f" (GPU part skipped: {reason})"
    return Part("faiss_gpu", "ok", 0.0, summary, figures)


def part_plan(timeout_s: float) -> Part:
    """The one-GPU layout must place on one GPU and fit its memory (no device needed)."""
    from memrl.cluster.placement import Node
    from memrl.config import load_config
    from memrl.plan import actor_groups, estimate_memory, place

    cfg = load_config(ROOT / ONE_GPU_CONFIG)
    groups = actor_groups(cfg)
    problem = place(groups, [Node("one-gpu", {"CPU": 16.0, "GPU": 1.0}, [1.0])])
    import torch
    from transformers import AutoModelForCausalLM

    from memrl.model.replicas import architecture
    from memrl.plan import ModelShape

    hf = architecture("qwen2").hf_config(full_size=True)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf).parameters())
    shape = ModelShape(params, hf.num_hidden_layers, hf.num_key_value_heads,
                       hf.hidden_size // hf.num_attention_heads)
    problem = problem or estimate_memory(cfg, groups, shape, 80.0)
    figures = {g.name: {"bundle": g.bundle, "memory": g.memory} for g in groups}
    if problem:
        return Part("one_gpu_plan", "failed", 0.0, problem, figures)
    gpus = sum(g.gpus * g.count for g in groups)
    return Part("one_gpu_plan", "ok", 0.0, f"{len(groups)} actor groups, {gpus:g} GPU on one device", figures)


def part_paper_steps(timeout_s: float) -> Part:
    reason = cuda_reason()
    if reason:
        return Part("paper_5_steps", "skipped", 0.0, f"{reason} (needs vLLM on GPU, NCCL, FAISS GPU)")
    data = os.environ.get(GSM8K_ENV) or str(ROOT.parent / "shared" / "data" / "gsm8k")
    if not (Path(data) / "train.jsonl").is_file():
        reason = f"no GSM8K files: set {GSM8K_ENV} to a folder with train.jsonl/test.jsonl"
        return Part("paper_5_steps", "skipped", 0.0, reason)
    model = _random_model_folder()
    out = tempfile.mkdtemp(prefix="memrl-smoke-")
    rc, text = _child([sys.executable, "-m", "memrl.cli", "train", ONE_GPU_CONFIG, "trainer.max_steps=5",
                       f"model.name_or_path={model}", f"data.path={data}/train.jsonl",
                       f"data.eval_path={data}/test.jsonl", "task.eval_size=32",
                       "trainer.eval_before_after=false", f"output_dir={out}", "logging.progress_bar=false"],
                      timeout_s)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return Part("paper_5_steps", "ok" if rc == 0 else "failed", 0.0, last, {"output_dir": out})


def _random_model_folder(arch: str = "qwen2") -> str:
    """A paper model's architecture and size with random weights, built from its config."""
    from bench import _common as common

    cfg = common.bench_config()
    task, path, _ = common.prepare(cfg, arch, "bfloat16")
    return path


# One step of ``memrl train`` on one GPU: the embedded default (arith, generated: no data) with
# the learner and one vLLM worker sharing the GPU, in the paper configs' dtype.
ARCH_STEP = ["trainer.max_steps=1", "trainer.eval_before_after=false", "model.dtype=bfloat16",
             "rollout.engine=vllm", "rollout.num_workers=1", "learner.num_gpus=0.5",
             "rollout.num_gpus_per_worker=0.5", "rollout.gpu_memory_utilization=0.3",
             "grpo.max_prompt_length=512", "logging.progress_bar=false"]


def part_paper_archs(timeout_s: float) -> Part:
    """One training step of each paper architecture at full size (the summary names each one's
    outcome; figures: its step's metrics)."""
    reason = cuda_reason()
    if reason:
        return Part("paper_archs", "skipped", 0.0, f"{reason} (one bf16 step of qwen2, llama3, falcon3 on vLLM)")
    from memrl.model.replicas import ARCHITECTURES
    from memrl.train.metrics import read_metrics

    deadline = time.monotonic() + timeout_s
    outcomes, figures = [], {}
    for arch in ARCHITECTURES:
        model = _random_model_folder(arch) if time.monotonic() < deadline else None
        left = deadline - time.monotonic()
        if model is None or left <= 0:
            outcomes.append(f"{arch} not run (time budget)")
            continue
        out = Path(tempfile.mkdtemp(prefix=f"memrl-smoke-{arch}-"))
        rc, text = _child([sys.executable, "-m", "memrl.cli", "train", f"output_dir={out}",
                           f"model.name_or_path={model}", *ARCH_STEP], left)
        steps = [m for m in read_metrics(out) if "weights/version" in m] if rc == 0 else []
        figures[arch] = steps[-1] if steps else {"rc": rc, "output": text[-1500:]}
        outcomes.append(f"{arch} {'ok' if steps else f'failed (rc {rc})'}")
    ok = len(figures) == len(ARCHITECTURES) and all("rc" not in f for f in figures.values())
    return Part("paper_archs", "ok" if ok else "failed", 0.0, ", ".join(outcomes), figures)


def _bench(name: str, module: str, extra: list[str]) -> Callable[[float], Part]:
    def run(timeout_s: float) -> Part:
        reason = cuda_reason()
        if reason:
            return Part(name, "skipped", 0.0, reason)
        out = Path(tempfile.mkdtemp(prefix="memrl-smoke-")) / f"{name}.json"
        rc, text = _child([sys.executable, "-m", module, "--model-size", "qwen2", "--json", str(out), *extra],
                          timeout_s)
        figures = json.loads(out.read_text()) if out.is_file() else {}
        last = text.strip().splitlines()[-1] if text.strip() else ""
        return Part(name, "ok" if rc == 0 else "failed", 0.0, last, figures)

    return run


PARTS: list[tuple[str, Callable[[float], Part], float]] = [
    ("gpu_tests", part_gpu_tests, 150.0),
    ("faiss_gpu", part_faiss, 60.0),
    ("one_gpu_plan", part_plan, 30.0),
    ("paper_5_steps", part_paper_steps, 150.0),
    ("paper_archs", part_paper_archs, 240.0),
    ("weight_sync", _bench("weight_sync", "bench.weight_sync", ["--repeats", "3"]), 45.0),
    ("vllm_tokens", _bench("vllm_tokens", "bench.rollout", ["--repeats", "2", "--no-two-workers"]), 45.0),
]


def run_parts(budget_s: float, only: list[str] | None = None) -> list[Part]:
    """Run the parts in order, each within its share of ``budget_s``; a part that raises is
    recorded as failed and the next one runs."""
    parts = []
    scale = budget_s / sum(limit for _, _, limit in PARTS)
    deadline = time.monotonic() + budget_s
    for name, fn, limit in PARTS:
        if only and name not in only:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            parts.append(Part(name, "skipped", 0.0, "the time budget was used up"))
            continue
        start = time.perf_counter()
        try:
            part = fn(min(limit * scale, left))
        except Exception as exc:  # one broken part must not hide the others' results
            part = Part(name, "failed", 0.0, f"{type(exc).__name__}: {exc}")
        part.seconds = time.perf_counter() - start
        parts.append(part)
        print(f"[{part.status:7s}] {name} ({part.seconds:.1f} s): {part.summary}", flush=True)
    return parts


def table(parts: list[Part]) -> str:
    return text_table([("part", "status", "seconds", "result")] + [
        (p.name, p.status, f"{p.seconds:.1f}", p.summary) for p in parts
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("runs/gpu_smoke.json"))
    parser.add_argument("--budget-s", type=float, default=720.0, help="whole run (default 12 min)")
    parser.add_argument("--only", nargs="*", default=None, choices=[name for name, _, _ in PARTS])
    args = parser.parse_args(argv)
    parts = run_parts(args.budget_s, args.only)
    print(table(parts))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"parts": [asdict(p) for p in parts]}, indent=2))
    print(f"wrote {args.json}")
    return 1 if any(p.status == "failed" for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
