"""The paper's second step: instruction-tune a model on the rows the filter kept.

`config.py` is the job's config, `data.py` turns rows into training examples, `loop.py` is
the Ray Train job and its per-worker loop, `metrics.py` its metrics and summary.
"""
