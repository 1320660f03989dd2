"""The paper's first step: score every row with the judge and keep the good ones.

`job.py` runs the filter job (read -> `stages/` -> write -> commit), with `config.py` its
config; `stages/__init__.py` lists the stages a row meets; `judge.py` chains them for any
Ray Dataset (`judge_dataset`); `manifest.py` is the commit that readers trust; `report.py`
and `metrics.py` describe what a written output holds.
"""
