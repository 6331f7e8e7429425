"""Reports and studies: one run's report, a grid of runs (``biomamba study``), and the tables
and figures that compare them.

``spec`` (the study recipe) → ``runner`` (expand, run or emit, select) → ``aggregate``
(values from the runs' files → tables and figures) → ``tables`` (Markdown, HTML, CSV, LaTeX,
SVG/PDF/PNG). ``report`` is the single-run report the pipeline writes.
"""
