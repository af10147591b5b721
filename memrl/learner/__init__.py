"""The learner: a DeepSpeed policy trainer per data-parallel rank.

The Ray shells around it (one actor per rank, the driver-side group) are in actors/learner.py.
"""

from memrl.learner.batching import shard_bounds, slice_batch
from memrl.learner.policy import LearnerSettings, PolicyTrainer
from memrl.learner.stats import merge_rank_stats

__all__ = ["LearnerSettings", "PolicyTrainer", "merge_rank_stats", "shard_bounds", "slice_batch"]
