"""``memrl eval``: a model's greedy accuracy and sampled pass@k on one split of a task.

One module per job: :mod:`.graders` names the two ways a completion is judged (the paper's
extractive match reads answers out of free text with :mod:`memrl.grading`), :mod:`.pass_at_k` the
estimator, :mod:`.settings` what to evaluate, :mod:`.from_run` the settings a training run
used, :mod:`.results` the result types, :mod:`.evaluate` the loop (the model found by
:func:`memrl.model.loading.locate_model`, as training finds it) and :mod:`.cli` the command line.
"""
