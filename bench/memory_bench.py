"""Benchmark: both intrinsic rewards for one training step, memrl vs the official per-sample path.

Builds success and failure memories of ``--keys`` questions (default 10,000) with
``--values-per-key`` stored responses each (default 100, the Memory-R+ capacity), filled with
synthetic random unit vectors so the build is fast. Each timed step then scores
``--questions`` × ``--completions`` (16 × 16) real texts — GSM8K questions and reasoning
variants made from their reference solutions — with the real all-MiniLM-L6-v2 encoder on the
CPU. Four rows:

- ``official``: bench/official_memory.py, the official code's per-sample path (one encoder call
  per text with the PyTorch sentence-transformers model, as the official code, one FAISS search
  per insert and per score, in each memory);
- ``memrl_paper_torch``: memrl, ``paper`` mode (the default): one batched encoder call for the
  step's distinct texts (question cache cold: every question is new to it), batched FAISS
  lookups, on the same torch encoder as the official row;
- ``memrl_paper_onnx``: the same on memrl's default encoder backend, ONNX Runtime (the same
  weights, ``memory.embedder_backend: onnx``);
- ``memrl_reference``: memrl, ``reference`` mode (the official insert-then-score order), torch.

The headline, ``design_speedup``, is official ÷ memrl paper on the same (torch) backend:
memrl's design (fewer encoder calls, batching) alone. The official code could switch its
encoder to ONNX with one argument (``SentenceTransformer(..., backend="onnx")``, which needs
the ``optimum`` package), so the ONNX backend's gain is a separate figure, ``onnx_gain``
(memrl torch ÷ memrl onnx); ``design_and_onnx_speedup`` (official torch ÷ memrl onnx) is
both together, the figure this benchmark used to report as its headline.

Every row starts from the same memory contents and scores the same steps (new questions each
round, as in a first epoch; ``--stored-fraction`` of them already stored, as in later epochs).
The rows take turns step by step over ``--rounds`` rounds (after one untimed warm-up round), so
a drift in the machine's speed hits them alike; each ratio is taken round by round and
reported as its median and range (min-max). Then the encoder work of the headline's two rows
(texts and tokens encoded per step; ``design_speedup`` = ``work_ratio`` × ``per_token_speedup``),
encoder costs per text, exact-search throughput for larger key counts (synthetic), and the
compact tables last. ``--json PATH`` writes the figures; each row records its
``encoder_backend`` and each ratio its two ``sides``. At the default size the rows hold about
11 GB of memories (by arithmetic: 2 × 1.5 GB of float32 values per memrl row, 1.5 GB that the
official row's two memories share).

Run from the repository root: ``python -m bench.memory_bench --json memory_bench.json``
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bench._common as common  # first: offline hubs, one thread per process
from bench.official_memory import OfficialMemory, official_step
from bench.shared_data import gsm8k_file
from memrl.memory import MemoryRewarder, MemorySettings, SentenceTransformerEmbedder
from memrl.memory.embedder import EMBEDDER_BACKENDS
from memrl.memory.episodic import MemoryArrays
from memrl.memory.index import KeyIndex

DEFAULT_DATA = gsm8k_file("train")  # $MEMRL_SHARED_DIR or ../shared beside the checkout
OPENERS = ["", "Let's think step by step. ", "First, ", "We need to find the answer. ", "Okay. "]
CLOSERS = ["", " So that is the answer.", " Let me double-check: yes.", " I think this is right.", " Done."]


def load_problems(path: Path | None, count: int, seed: int) -> list[tuple[str, str]]:
    """(question, solution text) pairs: GSM8K rows when the file exists, else generated."""
    rng = np.random.default_rng(seed)
    if path is not None and path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        picks = rng.choice(len(rows), size=count, replace=False)
        out = []
        for i in picks:
            solution = rows[i]["answer"].split("####")[0]
            out.append((rows[i]["question"], re.sub(r"<<[^>]*>>", "", solution).strip()))
        return out
    out = []
    for i in range(count):
        a, b, c = (int(x) for x in rng.integers(2, 90, 3))
        question = f"A shop has {a} boxes with {b} pens each and sells {c} pens. How many pens are left? (#{i})"
        solution = f"There are {a} * {b} = {a * b} pens.\nAfter selling, {a * b} - {c} = {a * b - c} remain."
        out.append((question, solution))
    return out


def completions_for(solution: str, count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct reasoning texts derived from a reference solution (dropped or
    reordered lines, changed numbers, filler), like sampled completions of one prompt."""
    lines = [line for line in solution.splitlines() if line.strip()] or [solution]
    out: list[str] = []
    while len(out) < count:
        chosen = [line for line in lines if rng.random() > 0.2] or lines[:1]
        if rng.random() < 0.3:
            chosen = list(rng.permutation(chosen))
        text = " ".join(chosen)
        if rng.random() < 0.5:
            text = re.sub(r"\d+", lambda m: str(int(m.group()) + int(rng.integers(1, 9))), text, count=2)
        text = OPENERS[rng.integers(len(OPENERS))] + text + CLOSERS[rng.integers(len(CLOSERS))]
        text += f" ({len(out)})"  # sampled completions are distinct texts
        out.append(text)
    return out


def build_steps(args: argparse.Namespace) -> list[tuple[list[str], list[str], list[bool]]]:
    """One (questions, reasonings, correct) batch per repetition (+1 untimed warm-up)."""
    rng = np.random.default_rng(args.seed)
    problems = load_problems(args.data, args.questions * (args.rounds + 1), args.seed)
    steps = []
    for r in range(args.rounds + 1):
        questions, reasonings = [], []
        for question, solution in problems[r * args.questions : (r + 1) * args.questions]:
            questions += [question] * args.completions
            reasonings += completions_for(solution, args.completions, rng)
        steps.append((questions, reasonings, [bool(c) for c in rng.random(len(questions)) < args.accuracy]))
    return steps


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((n, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


class Contents:
    """The starting memory contents shared by every path (keys oldest first)."""

    def __init__(self, args: argparse.Namespace, embedder, steps) -> None:
        rng = np.random.default_rng(args.seed + 1)
        dim = embedder.dim
        self.keys = unit_rows(rng, args.keys, dim)
        self.questions = [f"synthetic question {i}" for i in range(args.keys)]
        # a --stored-fraction of each timed step's questions are already stored (newest keys)
        stored = []
        for questions, _, _ in steps:
            distinct = list(dict.fromkeys(questions))
            stored += distinct[: int(round(args.stored_fraction * len(distinct)))]
        if stored:  # encoded as the official code does, so its bit-identical key merge works
            self.keys[-len(stored) :] = np.stack([encode_one(embedder, q) for q in stored])
            self.questions[-len(stored) :] = stored
        self.values = unit_rows(rng, args.keys * args.values_per_key, dim)  # shared by both memories
        self.values_per_key = args.values_per_key

    def memrl_arrays(self) -> MemoryArrays:
        n = len(self.questions)
        return MemoryArrays(
            keys=self.keys,
            values=self.values,
            value_counts=np.full(n, self.values_per_key, dtype=np.int64),
            questions=list(self.questions),
            value_texts=[["synthetic"] * self.values_per_key for _ in range(n)],
            next_evict=0,
        )

    def official_values(self) -> list[list[tuple[str, np.ndarray]]]:
        per = self.values_per_key
        return [[("synthetic", self.values[i * per + j]) for j in range(per)] for i in range(len(self.questions))]


def memrl_rewarder(settings: MemorySettings, embedder, contents: Contents) -> MemoryRewarder:
    rewarder = MemoryRewarder(settings, embedder)
    arrays = contents.memrl_arrays()
    rewarder.shard.load_arrays({"success": arrays, "failure": arrays})
    return rewarder


def timed(fn) -> tuple[float, object]:
    """(wall-clock seconds, result) of ``fn()``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class RecordingEmbedder:
    """Delegates to an embedder and records every text passed to its ``encode``."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.encoded: list[str] = []  # in call order

    def __getattr__(self, name: str):
        return getattr(self.embedder, name)

    def encode(self, texts):
        self.encoded.extend(texts)
        return self.embedder.encode(texts)


class MemrlPath:
    """memrl's rewarder on the benchmark memories, one :meth:`step` per training step; records
    the texts its encoder encodes (``encoded``)."""

    def __init__(self, settings: MemorySettings, embedder, contents: Contents):
        recorder = RecordingEmbedder(embedder)
        self.encoded = recorder.encoded
        self.rewarder = memrl_rewarder(settings, recorder, contents)

    def step(self, questions, reasonings, correct) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
        """(seconds, (exploit, explore)) of one step."""
        self.rewarder.encoder.clear_cache()  # every question new to the encoder cache
        return timed(lambda: self.rewarder.score_and_insert(questions, reasonings, correct))


def encode_one(embedder: SentenceTransformerEmbedder, text: str) -> np.ndarray:
    """The official code's encoder call: one text, the model's own output."""
    return embedder.model.encode(text, convert_to_numpy=True).astype(np.float32)


class OfficialPath:
    """The official per-sample path (bench/official_memory.py) on the same memories; records
    the texts it encodes."""

    def __init__(self, args: argparse.Namespace, embedder, contents: Contents):
        self.k = args.k
        self.encoded: list[str] = []  # every text passed to the encoder, in call order
        self.memories = []
        for phase in (0, 500):  # exploit memory; explore memory with the official 500-key warm-up
            memory = OfficialMemory(
                lambda text: self._encode(embedder, text), embedder.dim, args.keys, args.values_per_key,
                100, 1.0, phase,
            )
            memory.load_contents(contents.keys, contents.official_values())
            self.memories.append(memory)

    def _encode(self, embedder, text: str) -> np.ndarray:
        self.encoded.append(text)
        return encode_one(embedder, text)

    def step(self, questions, reasonings, correct) -> tuple[float, tuple[list[float], list[float]]]:
        """(seconds, (exploit, explore)) of one step."""
        return timed(lambda: official_step(*self.memories, questions, reasonings, correct, self.k))


def encoder_work(embedder: SentenceTransformerEmbedder, official: list[list[str]],
                 memrl: list[list[str]]) -> dict:
    """Texts and tokens encoded per timed step by each path (medians over steps), from the
    texts each path passed to its encoder."""
    counts: dict[str, int] = {}
    limit = embedder.model.max_seq_length  # the encoder truncates longer texts

    def tokens(texts: list[str]) -> int:
        todo = [t for t in dict.fromkeys(texts) if t not in counts]
        if todo:
            ids = embedder.model.tokenizer(todo)["input_ids"]
            counts.update(zip(todo, (min(len(row), limit) for row in ids)))
        return sum(counts[t] for t in texts)

    out = {
        "official_texts_per_step": statistics.median(len(t) for t in official),
        "memrl_texts_per_step": statistics.median(len(t) for t in memrl),
        "official_tokens_per_step": statistics.median(tokens(t) for t in official),
        "memrl_tokens_per_step": statistics.median(tokens(t) for t in memrl),
    }
    out["work_ratio"] = out["official_tokens_per_step"] / out["memrl_tokens_per_step"]
    return out


def encoder_costs(embedder: SentenceTransformerEmbedder, texts: list[str]) -> dict:
    """ms per text for this step's texts: one torch call per text (official), one batched
    torch call, one batched call on memrl's backend."""
    out: dict = {"texts": len(texts), "backend": embedder.backend}
    out["mean_tokens"] = float(np.mean([len(ids) for ids in embedder.model.tokenizer(texts)["input_ids"]]))
    for name, run in (
        ("single", lambda: [encode_one(embedder, text) for text in texts]),
        ("batched_torch", lambda: embedder.encode_torch(texts)),
        ("batched", lambda: embedder.encode(texts)),
    ):
        out[f"{name}_ms_per_text"] = 1000 * timed(run)[0] / len(texts)
    return out


def search_scaling(sizes: list[int], dim: int, k: int, batch: int, repeats: int, seed: int) -> list[dict]:
    """Exact top-k search over ``size`` synthetic keys: one step's distinct questions per
    call (``batch`` queries), and single queries."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        index = KeyIndex(dim, size, "cpu")
        for start in range(0, size, 100_000):
            chunk = unit_rows(rng, min(100_000, size - start), dim)
            if start == 0:
                index.write_all(chunk)
            else:
                for j, vec in enumerate(chunk):
                    index.write(start + j, vec)
        queries = unit_rows(rng, batch, dim)
        index.search(queries, k)  # warm-up
        batched = []
        for _ in range(repeats):
            t = time.perf_counter()
            index.search(queries, k)
            batched.append(time.perf_counter() - t)
        single = []
        for i in range(repeats):
            t = time.perf_counter()
            index.search(queries[i % batch : i % batch + 1], k)
            single.append(time.perf_counter() - t)
        rows.append(
            {
                "keys": size,
                "batch_queries": batch,
                "batched_queries_per_s": batch * repeats / sum(batched),
                "batched_p50_ms": 1000 * float(np.percentile(batched, 50)),
                "batched_p99_ms": 1000 * float(np.percentile(batched, 99)),
                "single_queries_per_s": repeats / sum(single),
                "single_p50_ms": 1000 * float(np.percentile(single, 50)),
                "single_p99_ms": 1000 * float(np.percentile(single, 99)),
            }
        )
        del index
        gc.collect()
    return rows


ROWS = ("official", "memrl_paper_torch", "memrl_paper_onnx", "memrl_reference")
# (figure, numerator row, denominator row): seconds over seconds, round by round.
RATIOS = (
    ("design_speedup", "official", "memrl_paper_torch"),
    ("onnx_gain", "memrl_paper_torch", "memrl_paper_onnx"),
    ("design_and_onnx_speedup", "official", "memrl_paper_onnx"),
    ("reference_mode_speedup", "official", "memrl_reference"),
)


def step_row(name: str, path, steps) -> Callable[[int], tuple[float, object, list[str]]]:
    """Round ``index`` of a row: (seconds, rewards, texts encoded) of ``path`` on ``steps[index]``."""
    def run(index: int) -> tuple[float, object, list[str]]:
        first = len(path.encoded)
        seconds, out = path.step(*steps[index])
        print(f"round {index}{' (warm-up)' if index == 0 else ''}: {name} {seconds:.3f} s", flush=True)
        return seconds, out, path.encoded[first:]
    return run


def ratio_figures(times: dict[str, list[float]], backends: dict[str, str]) -> dict[str, dict]:
    """Every figure of :data:`RATIOS` from the rows' per-round seconds: median, range and
    ``per_round`` ratios, the two ``sides`` and whether they ran on the same encoder backend."""
    out = {}
    for name, numerator, denominator in RATIOS:
        out[name] = {**common.ratio_rounds(times[numerator], times[denominator], name),
                     "sides": [numerator, denominator],
                     "same_backend": backends[numerator] == backends[denominator]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--values-per-key", type=int, default=100)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--completions", type=int, default=16)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds, one step per row each (+1 untimed warm-up round)")
    parser.add_argument("--accuracy", type=float, default=0.3, help="fraction of correct completions")
    parser.add_argument("--stored-fraction", type=float, default=0.5)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_file() else None)
    parser.add_argument("--scale-keys", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--scale-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch, onnxruntime and FAISS threads (every row)")
    parser.add_argument("--encode-batch-size", type=int, default=MemorySettings.default().encode_batch_size,
                        help="texts per forward pass of memrl's encoder (memory.encode_batch_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: must be >= 1")

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    embedders = {backend: SentenceTransformerEmbedder(device="cpu", batch_size=args.encode_batch_size,
                                                      backend=backend)
                 for backend in EMBEDDER_BACKENDS}
    for embedder in embedders.values():
        embedder.encode(["warm-up text"] * 8)
    torch_embedder = embedders["torch"]
    if embedders["onnx"].backend != "onnx":  # fell back (the warning above says why)
        print("memrl_paper_onnx runs on torch: onnx_gain compares torch with itself")
    steps = build_steps(args)
    t = time.perf_counter()
    contents = Contents(args, torch_embedder, steps)
    print(f"built {args.keys} keys x {args.values_per_key} values per memory in {time.perf_counter() - t:.1f} s; "
          f"{args.rounds} timed rounds of {args.questions} x {args.completions} completions per row")

    def settings(mode: str, embedder: SentenceTransformerEmbedder) -> MemorySettings:
        base = dict(k=args.k, capacity_keys=args.keys, capacity_values=args.values_per_key,
                    embedder="all-MiniLM-L6-v2", embedder_backend=embedder.backend, device="cpu",
                    encode_batch_size=args.encode_batch_size)
        # paper: explore active, as in the official run after warm-up
        return MemorySettings.default(**base, warmup=0) if mode == "paper" else MemorySettings.reference(**base)

    paths = {
        "official": OfficialPath(args, torch_embedder, contents),
        "memrl_paper_torch": MemrlPath(settings("paper", torch_embedder), torch_embedder, contents),
        "memrl_paper_onnx": MemrlPath(settings("paper", embedders["onnx"]), embedders["onnx"], contents),
        "memrl_reference": MemrlPath(settings("reference", torch_embedder), torch_embedder, contents),
    }
    backends = {"official": "torch", "memrl_paper_torch": torch_embedder.backend,
                "memrl_paper_onnx": embedders["onnx"].backend, "memrl_reference": torch_embedder.backend}
    del contents
    # Round 0 (steps[0]) warms every row up and is dropped.
    results = common.alternating_rounds({name: step_row(name, paths[name], steps) for name in ROWS},
                                        args.rounds, warmup=1)
    del paths
    gc.collect()
    times = {name: [seconds for seconds, _, _ in results[name]] for name in ROWS}
    diffs = np.concatenate([
        np.abs(np.asarray(official[i]) - reference[i])
        for (_, reference, _), (_, official, _) in zip(results["memrl_reference"], results["official"])
        for i in (0, 1)
    ])
    figures: dict = {
        "rows": {name: {"encoder_backend": backends[name], "times_s": times[name],
                        "seconds": common.summarise(times[name])} for name in ROWS},
        **ratio_figures(times, backends),
        "reference_vs_official_max_abs_diff": float(diffs.max()),
        "reference_vs_official_frac_over_1e-3": float((diffs > 1e-3).mean()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "machine": {**common.machine(), "threads": args.threads, "faiss": faiss.__version__, "device": "cpu"},
    }
    print(f"reference mode vs official: max |diff| {figures['reference_vs_official_max_abs_diff']:.2e} "
          f"({100 * figures['reference_vs_official_frac_over_1e-3']:.1f}% of rewards over 1e-3; "
          "batched vs single-text encoder rounding meeting self-match windows)")

    figures["encoder_work"] = encoder_work(torch_embedder, [texts for _, _, texts in results["official"]],
                                           [texts for _, _, texts in results["memrl_paper_torch"]])
    figures["per_token_speedup"] = figures["design_speedup"]["median"] / figures["encoder_work"]["work_ratio"]
    questions, reasonings, _ = steps[0]
    figures["encoder_reasonings"] = encoder_costs(embedders["onnx"], reasonings[:64])
    figures["encoder_questions"] = encoder_costs(embedders["onnx"], list(dict.fromkeys(questions)))
    scaling = search_scaling(args.scale_keys, 384, args.k, args.questions, args.scale_repeats, args.seed)
    figures["search_scaling"] = scaling
    common.write_json(args.json, figures)

    print()
    print(f"one step = {args.questions} x {args.completions} completions, {args.keys} keys x "
          f"{args.values_per_key} values, k={args.k}, {args.threads} threads, CPU; "
          f"{args.rounds} rounds, ratios round by round: median (min-max)")
    print(common.format_table(
        ["row", "encoder", "median s/step", "min", "max"],
        [[name, backends[name], row["seconds"]["median"], row["seconds"]["min"], row["seconds"]["max"]]
         for name, row in figures["rows"].items()]))
    print(common.format_table(
        ["figure", "rows", "median", "range"],
        [[name, " / ".join(figures[name]["sides"]), figures[name]["median"],
          f"{figures[name]['min']:.2f}-{figures[name]['max']:.2f}"] for name, _, _ in RATIOS]))
    headline = figures["design_speedup"]
    print(f"design_speedup (both on the {backends['official']} encoder): {common.median_range(headline)}x; "
          f"onnx_gain {common.median_range(figures['onnx_gain'])}x; together "
          f"{common.median_range(figures['design_and_onnx_speedup'])}x")
    w = figures["encoder_work"]
    print(f"encoder work per step: official {w['official_texts_per_step']:.0f} texts / "
          f"{w['official_tokens_per_step']:.0f} tokens, memrl {w['memrl_texts_per_step']:.0f} texts / "
          f"{w['memrl_tokens_per_step']:.0f} tokens: ratio {w['work_ratio']:.2f}; design_speedup = "
          f"{w['work_ratio']:.2f} x {figures['per_token_speedup']:.2f} per token (batching)")
    for name in ("reasonings", "questions"):
        e = figures[f"encoder_{name}"]
        print(f"encoder, {name} ({e['mean_tokens']:.0f} tokens), ms/text: one by one (torch) "
              f"{e['single_ms_per_text']:.1f}, batched torch {e['batched_torch_ms_per_text']:.1f}, "
              f"batched {e['backend']} {e['batched_ms_per_text']:.1f}")
    print(f"{'keys':>10}{'batch q/s':>12}{'batch p99 ms':>14}{'single q/s':>12}{'single p99 ms':>15}")
    for row in scaling:
        print(f"{row['keys']:>10}{row['batched_queries_per_s']:>12.0f}{row['batched_p99_ms']:>14.1f}"
              f"{row['single_queries_per_s']:>12.0f}{row['single_p99_ms']:>15.1f}")
    return figures


if __name__ == "__main__":
    main()
