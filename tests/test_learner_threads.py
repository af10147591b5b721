"""Threads of a CPU learner's optimiser step: the idle cores of a synchronous step, its own
CPUs when the rollout workers generate meanwhile, and what a user sets."""

from __future__ import annotations

import pytest
import torch

from memrl.config import ConfigError, load_config
from memrl.learner.threads import resolve_train_threads, torch_threads
from memrl.train.setup import learner_settings


@pytest.mark.parametrize(("setting", "overlaps", "assigned", "cores", "learners", "expected"), [
    ("auto", False, 1.0, 2, 1, 2),    # the default on 2 cores: both while the workers wait
    ("auto", False, 1.0, 16, 2, 8),   # two learners on one node share its cores
    ("auto", True, 1.0, 16, 1, 1),    # async: the workers generate meanwhile
    ("auto", True, 4.0, 16, 1, 4),    # ... it keeps the CPUs Ray gave it
    ("auto", False, 4.0, 2, 1, 4),    # never fewer than its own CPUs
    ("auto", False, 0.5, 1, 3, 1),    # never fewer than one
    (3, True, 1.0, 2, 1, 3),          # a number is used as it is
])
def test_train_threads_follow_what_else_computes_during_the_step(setting, overlaps, assigned, cores,
                                                                  learners, expected):
    assert resolve_train_threads(setting, others_compute=overlaps, assigned_cpus=assigned, cores=cores,
                                 learners_on_node=learners) == expected


def test_a_bad_thread_count_names_the_key():
    with pytest.raises(ConfigError, match="train_threads"):
        load_config(None, ["learner.train_threads=0"])
    with pytest.raises(ValueError, match="learner.train_threads = 0"):
        resolve_train_threads(0, others_compute=False, assigned_cpus=1, cores=2, learners_on_node=1)


def test_the_config_reaches_the_learner_settings():
    sync = learner_settings(load_config(None, ["learner.train_threads=3", "rollout.mode=sync"]), "m")
    assert (sync.train_threads, sync.rollout_overlaps) == (3, False)
    assert sync.scoring_overlaps_reference  # the default, Memory-R+: the memory encodes meanwhile
    overlapped = learner_settings(load_config(None, ["method=r1"]), "m")  # the default's async
    assert (overlapped.train_threads, overlapped.rollout_overlaps) == ("auto", True)
    assert not overlapped.scoring_overlaps_reference  # R1's scoring is rule checks only


def test_torch_threads_sets_the_pool_inside_and_restores_it_after():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        raise RuntimeError("a failed step")
    assert torch.get_num_threads() == before
