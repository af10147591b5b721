"""The training driver: prompt stream, dispatch to rollout workers, scoring, learner steps.

The loop itself is ``memrl.train.loop.run_training`` (imported on use: it pulls in Ray and torch).
"""
