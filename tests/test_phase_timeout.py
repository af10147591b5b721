"""A phase slower than ``trainer.timeout_s`` ends the run with a message that names the phase,
the step, the actor and the key; the run directory is released and the cluster leaves the
run's actors."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_configs import make_config

from memrl.errors import PhaseTimeout, explain
from memrl.run_dir import LOCK_FILE
from memrl.train.loop import Trainer

pytestmark = pytest.mark.slow


def test_scoring_slower_than_the_timeout_names_the_phase(ray_cluster, tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=2", "memory.embedder=hash",
                      "trainer.eval_before_after=false", "logging.tensorboard=false")
    trainer = Trainer(cfg)
    try:
        # Start-up is done: from here on the limit is far below what scoring takes (the reward
        # task has to start, fetch the batches and call the memory service).
        trainer.cfg.trainer.timeout_s = 0.001
        with pytest.raises(PhaseTimeout) as info:
            trainer.run()
    finally:
        trainer.close()
    message, code = explain(info.value)
    assert code == 1
    assert "timed out after 0.001 s waiting for scoring (rewards " in message
    assert "and the memory service)" in message
    assert "phase 'scoring (rewards " in message and "step 1" in message
    assert "actor the reward task" in message and "trainer.timeout_s" in message
    assert not (Path(cfg.output_dir) / LOCK_FILE).exists()
