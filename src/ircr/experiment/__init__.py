"""``ircr experiment``: a protocol (methods x label ratios x seeds) -> run folders -> report.

* :mod:`ircr.experiment.protocol` — the typed protocol YAML and its expansion into runs;
* :mod:`ircr.experiment.plan` — iteration budgets (equal per ratio, fixed, or fitted to a
  wall-clock budget from measured warm-up rates) and the compressed lr schedule;
* :mod:`ircr.experiment.runner` — run folders: skip finished, resume interrupted, record failed,
  ``--jobs N`` processes, progress lines;
* :mod:`ircr.experiment.report` — ``report.md`` / ``report.csv`` / plots from the run folders.
"""
