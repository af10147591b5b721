"""How many torch threads a CPU learner uses in its optimiser step and its reference pass.

A step's phases mostly alternate: the rollout workers generate, the driver scores, then the
learner trains while, in the synchronous rollout mode, every rollout worker waits for the new
weights. A learner that keeps the one thread per Ray CPU it was given leaves the rest of the
node idle for the longest phase of the step, so during the optimiser step (and the reference
pass, when no memory service encodes beside it) it takes the node's cores, shared among the
node's learners. In the asynchronous mode the rollout workers
generate the next step while the learner trains, so the learner keeps its own CPUs: two
processes with several threads each on the same cores run many times slower than with one
(shared/field-notes.md measured 22x for generation on 2 cores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

TrainThreads = int | Literal["auto"]


def node_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's limit sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_train_threads(setting: TrainThreads, *, others_compute: bool, assigned_cpus: float,
                          cores: int, learners_on_node: int) -> int:
    """Torch threads for a phase of the learner (the optimiser step, the reference pass).

    ``setting``: a number is used as it is; ``"auto"`` gives the node's ``cores`` divided
    among ``learners_on_node`` when nothing else computes during the phase
    (``others_compute`` False), else the learner's own ``assigned_cpus``. Never fewer than
    the assigned CPUs, never fewer than one."""
    own = max(1, int(assigned_cpus))
    if setting != "auto":
        if setting < 1:
            raise ValueError(f"learner.train_threads = {setting!r}: must be >= 1 or 'auto'")
        return setting
    if others_compute:
        return own
    return max(own, cores // max(1, learners_on_node))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """While inside, torch's intra-op pool has ``count`` threads; the previous count after."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
