"""The paper's third step: answer the test sets with each model and let a judge compare the
answers pairwise, in both orders.

`job.py` runs it; `pairwise.py` holds the paper's pairwise prompt, score parsing and
win/tie/lose rule; `report.py` turns the outcomes into tables and charts.
"""
