"""The recipe of the offline tiny base (``model.name_or_path: tiny``): its cache key and the
tokenizer text and warm-start demonstrations that :func:`memrl.model.warmstart.cached_tiny_model`
builds it from, drawn from the configured task's training records."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memrl.model.warmstart import Example
from memrl.prompts import build_messages
from memrl.types import Record

if TYPE_CHECKING:
    from memrl.config import Config
    from memrl.tasks.base import Task


def warmstart_completions(task: Task, records: list[Record], free_text_fraction: float,
                          seed: int) -> list[str]:
    """One warm-start demonstration per record (:meth:`Task.demonstration`); each is free text with probability
    ``free_text_fraction`` (drawn from a stream seeded by ``seed`` alone, so the prompts'
    exemplar draws do not depend on the fraction), else in the task's answer format."""
    draws = random.Random(f"free-text:{seed}")
    return [task.demonstration(r, free_text=draws.random() < free_text_fraction) for r in records]


@dataclass(frozen=True)
class TinyBaseRecipe:
    """How the offline tiny base is built: the spec (its cache key) and the data makers that
    :func:`memrl.model.warmstart.cached_tiny_model` calls only when it must build."""

    spec: dict[str, Any]
    texts: Callable[[], list[str]]
    examples: Callable[[], list[Example]]
    habit_examples: Callable[[], list[Example]] | None


def tiny_base_recipe(cfg: Config, task: Task) -> TinyBaseRecipe:
    """The recipe of ``model.tiny``: tokenizer text, warm-start demonstrations (the first
    ``warmstart_examples`` training records) and, with ``habit_steps``, the second stage's
    demonstrations (the next ``warmstart_examples`` records, ``habit_direct_fraction`` of them
    direct answers)."""
    tiny = cfg.model.tiny
    train = task.dataset("train")
    n = min(tiny.warmstart_examples, len(train))
    records = [train[i] for i in range(n)]
    completions = warmstart_completions(task, records, tiny.warmstart_free_text_fraction, tiny.seed)
    habit: list[tuple[Record, str]] = []
    if tiny.habit_steps:
        draws = random.Random(f"habit:{tiny.seed}")
        habit = [(r, task.demonstration(r, direct=draws.random() < tiny.habit_direct_fraction))
                 for r in (train[i] for i in range(n, min(2 * n, len(train))))]
    rng = random.Random(tiny.seed)

    def texts() -> list[str]:
        corpus = [task.system_prompt] + [q for q, _ in task.exemplars] + [a for _, a in task.exemplars]
        for r, completion in zip(records, completions):
            corpus += [r.question, completion]
        # Both answer styles of every second-stage record, whichever its draw picked: the
        # tokenizer (and so the first stage) does not change with habit_direct_fraction.
        for r, _ in habit:
            corpus += [r.question, task.demonstration(r), task.demonstration(r, direct=True)]
        return corpus

    def demonstrations(pairs: list[tuple[Record, str]]) -> list[Example]:
        return [
            (build_messages(r.question, system_prompt=task.system_prompt, exemplars=task.exemplars,
                            num_shots=cfg.task.num_shots, rng=rng), completion)
            for r, completion in pairs
        ]

    # The architecture enters the key only when it is not Llama: bases built before it was an
    # option (the shipped default's among them) keep their keys.
    sizes = tiny.model_dump(exclude={"warmstart_steps", "warmstart_lr", "warmstart_batch_size",
                                     "warmstart_examples", "warmstart_free_text_fraction",
                                     "habit_steps", "habit_lr", "habit_direct_fraction", "cache_dir"}
                            | ({"architecture"} if tiny.architecture == "llama" else set()))
    spec: dict[str, Any] = {
        "model": sizes,
        "warmstart": {"steps": tiny.warmstart_steps, "lr": tiny.warmstart_lr,
                      "batch_size": tiny.warmstart_batch_size, "seed": tiny.seed},
        # Not arguments: recorded so that different warm-start data gets a different folder.
        # task.options only when set, so the cache keys of built-in tasks' models stay the same.
        "data": {"task": cfg.task.model_dump(mode="json", exclude={"eval_size"} | (
                     set() if cfg.task.options else {"options"})),
                 "files": cfg.data.model_dump(mode="json"), "examples": n, "format": 1,
                 "free_text_fraction": tiny.warmstart_free_text_fraction},
    }
    if habit:
        spec["habit"] = {"steps": tiny.habit_steps, "lr": tiny.habit_lr,
                         "batch_size": tiny.warmstart_batch_size, "seed": tiny.seed}
        spec["data"]["habit_direct_fraction"] = tiny.habit_direct_fraction
    return TinyBaseRecipe(
        spec=spec, texts=texts,
        examples=lambda: demonstrations(list(zip(records, completions))),
        habit_examples=(lambda: demonstrations(habit)) if habit else None)
