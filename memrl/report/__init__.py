"""``memrl report``: plots and a summary of training runs, with the collapse indicators.

Reads each ``RUN_DIR`` (``metrics.jsonl`` required; ``config.yaml`` and ``summary.json`` used
when present, so a run still in progress can be reported) and writes into ``out_dir``:

* one PNG per topic — ``accuracy.png``, ``rewards.png``, ``length.png``, ``kl.png``,
  ``memory.png``, ``time.png``, ``throughput.png`` — with every run overlaid in its own colour
  and labelled ``RUN_DIR name (method, seed N)``; a topic no run logs is not drawn, and the
  summary says so;
* ``report.md`` (or ``report.html``): a headline table, the collapse findings
  (``memrl.collapse``), the plots, and each run's shortened config.

One module per job: :mod:`.runs` loads a run directory, :mod:`.summary` its headline numbers
(also used by ``memrl compare``), :mod:`.topics` says what each plot shows and :mod:`.plots`
draws it, :mod:`.configs` shortens and compares configs, :mod:`.document` is the format-free
document model that :mod:`.contents` fills and :mod:`.render_markdown` / :mod:`.render_html`
turn into text, :mod:`.write` puts it all in a folder and :mod:`.cli` is the command line.
:mod:`.table` formats tables as text, for the report and for every other command.
"""
