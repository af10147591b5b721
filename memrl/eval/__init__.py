"""``memrl eval``: a model's greedy accuracy and sampled pass@k on one split of a task.

One module per job: :mod:`.graders` names the two ways a completion is judged (the paper's
extractive match reads answers out of free text with :mod:`memrl.grading`), :mod:`.pass_at_k` the
estimator, :mod:`.settings` what to evaluate, :mod:`.from_run` the settings a training run
used, :mod:`.models` where a model is loaded from, :mod:`.results` the result types,
:mod:`.evaluate` the loop and :mod:`.cli` the command line.
"""
