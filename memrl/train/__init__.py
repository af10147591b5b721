"""The training driver: prompt stream, dispatch to rollout workers, scoring, learner steps."""

from memrl.train.loop import run_training

__all__ = ["run_training"]
