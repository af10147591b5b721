"""The training driver: prompt stream, dispatch to rollout workers, scoring, learner steps."""
