"""Supervised warm start of a saved causal LM, and a build-once cache of warm-started tiny models.

A randomly initialised tiny model never writes the ``<reasoning>``/``<answer>`` format, so
every reward is zero and GRPO has no signal. A short supervised fine-tune on
(chat prompt, reference completion) pairs turns it into a weak base model: it writes the
format and gets some answers right, leaving room for RL to improve.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

from memrl.model.tiny import build_tiny_model

logger = logging.getLogger(__name__)

Example = tuple[list[dict[str, str]], str]  # (chat messages of the prompt, assistant completion)
IGNORE_INDEX = -100  # label value that the causal-LM loss skips
EVAL_EXAMPLES = 64  # examples scored before and after training to report the loss change
STATS_FILE = "warmstart.json"
HABIT_STATS_FILE = "habit.json"
SPEC_FILE = "memrl_spec.json"
# Bases that ship inside the package, one folder per spec key (built by `memrl build-base`):
# a spec found here is used as it is, so every machine starts from the same weights.
SHIPPED_BASES = Path(__file__).with_name("bases")


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], completion: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one pair; labels are ``IGNORE_INDEX`` on the prompt.

    The prompt is the chat template with the generation prompt, tokenised as the rollout
    workers tokenise it; the completion is tokenised on its own and followed by EOS, so the
    model learns to stop. The pair is cut to ``max_length`` tokens from the right.
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"prompt of {len(prompt_ids)} tokens leaves no room for the completion within "
            f"max_length={max_length}: {prompt[:80]!r}..."
        )
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return input_ids, labels


def _collate(
    encoded: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) into [B, T] tensors for a training forward."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


@torch.no_grad()
def _mean_completion_loss(
    model: torch.nn.Module, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> float:
    """Cross-entropy per completion token (nats), averaged over all tokens of ``encoded``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = _collate(encoded[start : start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(losses)
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def warm_start(
    model_dir: str | Path,
    examples: Sequence[Example],
    stats_file: str = STATS_FILE,
    *,
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 32,
    max_length: int = 256,
    seed: int = 0,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    log_every: int = 50,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Fine-tune the model saved in ``model_dir`` on (prompt messages, completion) pairs.

    Loss is the next-token cross-entropy on the completion tokens and the closing EOS only.
    AdamW with a linear warm-up over ``warmup_fraction`` of ``steps`` then cosine decay to
    zero; gradient norm clipped to 1. Batches walk through shuffled epochs of ``examples``
    (order set by ``seed``). Runs with ``num_threads`` torch threads (restored afterwards) and
    saves the weights back into ``model_dir`` together with ``stats_file`` (the statistics
    below, as JSON). ``steps=0``
    only measures the loss and leaves the weights as they are.

    Returns statistics: ``loss_before``/``loss_after`` (nats per completion token on the first
    64 examples), ``losses`` ([step, training loss] every ``log_every`` steps), ``seconds``
    (wall time of the training loop) and the arguments.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps ({steps}) must be >= 0 and batch_size ({batch_size}) >= 1")
    if not examples:
        raise ValueError("warm_start needs at least one example")
    folder = Path(model_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        pad_id = tokenizer.pad_token_id
        encoded = [encode_example(tokenizer, msgs, done, max_length) for msgs, done in examples]
        eval_set = encoded[:EVAL_EXAMPLES]
        loss_before = _mean_completion_loss(model, eval_set, pad_id, batch_size)

        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = get_cosine_schedule_with_warmup(
            optimizer, math.ceil(warmup_fraction * steps), steps
        )
        order_rng = torch.Generator().manual_seed(seed)
        order: list[int] = []
        losses: list[list[float]] = []
        started = time.perf_counter()
        for step in range(1, steps + 1):
            if len(order) < batch_size:
                order += torch.randperm(len(encoded), generator=order_rng).tolist()
            picked, order = order[:batch_size], order[batch_size:]
            batch = _collate([encoded[i] for i in picked], pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % log_every == 0 or step == steps:
                losses.append([step, loss.item()])
                logger.info("warm start step %d/%d loss %.4f", step, steps, losses[-1][1])
        seconds = time.perf_counter() - started
        loss_after = _mean_completion_loss(model, eval_set, pad_id, batch_size)
        model.save_pretrained(folder)
    finally:
        torch.set_num_threads(previous_threads)

    stats = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
        "num_examples": len(examples),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "losses": losses,
        "seconds": seconds,
    }
    (folder / stats_file).write_text(json.dumps(stats, indent=1))
    return stats


def _section(spec: dict[str, Any], name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """``spec[name]`` checked against the keyword-only parameters of ``fn``."""
    section = spec.get(name, {})
    if not isinstance(section, dict):
        raise ValueError(f"spec[{name!r}] must be a dict of {fn.__name__} options, got {section!r}")
    allowed = {
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(
            f"spec[{name!r}] has unknown keys {unknown}; {fn.__name__} accepts {sorted(allowed)}"
        )
    return section


def spec_key(spec: dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of ``spec`` as canonical JSON (sorted keys)."""
    try:
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"spec must be JSON-serialisable: {err}") from err
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def shipped_base(spec: dict[str, Any], root: Path | None = None) -> Path | None:
    """The shipped folder (under ``root``, default :data:`SHIPPED_BASES`) built from exactly
    ``spec``, or None when memrl ships none."""
    folder = (SHIPPED_BASES if root is None else root) / spec_key(spec)
    return folder if (folder / SPEC_FILE).is_file() else None


def cached_tiny_model(
    cache_root: str | Path,
    spec: dict[str, Any],
    make_texts: Callable[[], list[str]],
    make_examples: Callable[[], list[Example]],
    make_habit_examples: Callable[[], list[Example]] | None = None,
    *,
    use_shipped: bool = True,
) -> Path:
    """Folder of a tiny model built from ``spec`` and warm-started, built at most once.

    ``spec["model"]`` holds keyword options of ``build_tiny_model`` (sizes, seed),
    ``spec["warmstart"]`` those of ``warm_start`` (steps, lr, ...) for ``make_examples``; an
    optional ``spec["habit"]`` (same options) runs a second ``warm_start`` on
    ``make_habit_examples`` afterwards (statistics in ``habit.json``). Any other top-level key
    (e.g. a description of the task data) only enters the cache key, which is
    ``spec_key(spec)``: change whatever the callables produce and record the change in
    ``spec``. A base that memrl ships for this spec (:func:`shipped_base`) is returned as it is
    unless ``use_shipped`` is false; otherwise the folder is ``cache_root / spec_key(spec)``. It
    is built in a temporary folder beside it and renamed into place once complete, so a
    half-built model is never visible; a lock file makes concurrent callers on one machine wait
    for a single build.
    """
    model_options = _section(spec, "model", build_tiny_model)
    warmstart_options = _section(spec, "warmstart", warm_start)
    habit: tuple[dict[str, Any], Callable[[], list[Example]]] | None = None
    if "habit" in spec:
        if make_habit_examples is None:
            raise ValueError("spec['habit'] is set but no make_habit_examples was given")
        habit = (_section(spec, "habit", warm_start), make_habit_examples)
    if use_shipped and (shipped := shipped_base(spec)) is not None:
        return shipped
    key = spec_key(spec)
    root = Path(cache_root).expanduser()
    final = root / key
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f"{key}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        # Under the lock no one else builds this key: leftovers are from killed builds.
        for stale in root.glob(f".{key}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            steps = _steps(warmstart_options) + (_steps(habit[0]) if habit else 0)
            print(f"memrl: building the tiny base model {key} (tokenizer, then {steps} supervised "
                  f"steps; minutes on a CPU) in {final}; later runs reuse it", file=sys.stderr,
                  flush=True)
            build_tiny_model(staging, make_texts(), **model_options)
            warm_start(staging, make_examples(), **warmstart_options)
            if habit is not None:
                habit_options, make_habit = habit
                warm_start(staging, make_habit(), HABIT_STATS_FILE, **habit_options)
            (staging / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
            os.chmod(staging, 0o755)
            os.rename(staging, final)
        except OSError:
            # Renaming onto a folder that appeared meanwhile (a filesystem without flock).
            shutil.rmtree(staging, ignore_errors=True)
            if final.is_dir():
                return final
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


def _steps(options: dict[str, Any]) -> int:
    """The steps a ``warm_start`` with ``options`` runs (its own default where they say none)."""
    return options.get("steps", inspect.signature(warm_start).parameters["steps"].default)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, removed again on every exit path.

    A waiter may wake up holding a file the previous holder already unlinked; it then retries
    on the file now at ``path``, so two builders never hold "the" lock at once."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
