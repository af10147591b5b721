"""The random bonus of r1+random: its draws, its seeding and the schedule read from a Memory-R+ run."""

import json

import numpy as np
import pytest

from memrl.errors import InputError
from memrl.rewards.random_bonus import RandomBonus, draw_random_bonus, read_intrinsic_schedule


def test_draws_have_the_asked_mean_and_std_and_repeat_with_the_seed():
    draws = draw_random_bonus(200_000, 0.7, 0.3, seed=5, step=2)
    assert draws.shape == (200_000,) and draws.dtype == np.float64
    # Standard errors: 0.3 / sqrt(2e5) = 6.7e-4 for the mean, about 4.7e-4 for the std.
    assert draws.mean() == pytest.approx(0.7, abs=4e-3)
    assert draws.std() == pytest.approx(0.3, abs=3e-3)
    np.testing.assert_array_equal(draws, draw_random_bonus(200_000, 0.7, 0.3, seed=5, step=2))
    # Another step or another seed draws other values.
    assert not np.array_equal(draws[:8], draw_random_bonus(8, 0.7, 0.3, seed=5, step=3))
    assert not np.array_equal(draws[:8], draw_random_bonus(8, 0.7, 0.3, seed=6, step=2))
    np.testing.assert_array_equal(draw_random_bonus(3, 0.25, 0.0, seed=0, step=0), [0.25, 0.25, 0.25])
    with pytest.raises(ValueError, match="std -1"):
        draw_random_bonus(3, 0.0, -1.0, seed=0, step=0)


def test_a_schedule_gives_each_step_its_own_mean_and_std():
    bonus = RandomBonus(seed=1, means=(0.0, 10.0), stds=(0.1, 0.1))
    assert bonus.draw(1000, 0).mean() == pytest.approx(0.0, abs=0.02)
    assert bonus.draw(1000, 1).mean() == pytest.approx(10.0, abs=0.02)
    np.testing.assert_array_equal(bonus.draw(4, 1), draw_random_bonus(4, 10.0, 0.1, seed=1, step=1))
    with pytest.raises(ValueError, match="no mean/std for step 3"):
        bonus.draw(4, 2)
    constant = RandomBonus.constant(0.5, 0.0, seed=1)
    assert constant.draw(2, 40).tolist() == [0.5, 0.5]


def _metrics(run_dir, lines):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_schedule_is_read_per_step_from_a_memory_r_plus_run(tmp_path):
    run = tmp_path / "memoryr_plus_seed0"
    _metrics(run, [{"step": 0, "eval/accuracy": 0.1},
                   {"step": 1, "reward/intrinsic/mean": 0.2, "reward/intrinsic/std": 0.05},
                   {"step": 2, "reward/intrinsic/mean": 0.9, "reward/intrinsic/std": 0.4},
                   {"step": 2, "eval/accuracy": 0.3},
                   {"step": 2, "reward/intrinsic/mean": 1.1, "reward/intrinsic/std": 0.5}])  # resumed: the last wins
    assert read_intrinsic_schedule(run, 2) == ((0.2, 1.1), (0.05, 0.5))
    assert read_intrinsic_schedule(run / "metrics.jsonl", 1) == ((0.2,), (0.05,))
    with pytest.raises(InputError) as short:
        read_intrinsic_schedule(run, 3)
    text = str(short.value)
    assert "metrics.jsonl has no reward/intrinsic/mean / reward/intrinsic/std at step 3" in text
    assert "random_bonus.match_run" in text
    with pytest.raises(InputError, match="does not exist"):
        read_intrinsic_schedule(tmp_path / "nowhere", 1)
    r1 = tmp_path / "r1_seed0"  # a run without intrinsic terms cannot be matched
    _metrics(r1, [{"step": 1, "reward/total/mean": 1.0}])
    with pytest.raises(InputError, match="at step 1 "):
        read_intrinsic_schedule(r1, 1)
