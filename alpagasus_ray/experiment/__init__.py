"""The paper's experiment on the user's own data, one command: filter, fine-tune a model on the
kept rows and one on every judged row, judge the two pairwise, one report.

`config.py` lays the steps out in one folder; `job.py` runs each step that has not finished
(each step is the command users run alone); `report.py` writes experiment.md and commits
experiment.json.
"""
