"""The pure cluster and dispatch decisions: whether the run's actors fit the nodes and where
(:mod:`.placement`), how many rollout workers a changing cluster holds and what a drain does to
them (:mod:`.capacity`), and what a step asks of its workers (:mod:`.requests`). Plain functions
over snapshots and settings, no Ray: the driver (:mod:`memrl.train`, ``memrl plan``) and the
actors (:mod:`memrl.actors`) both use them.
"""
