"""The paper's first step: score every row with the judge and keep the good ones.

`pipeline.py` runs the job (read -> stages/ -> write), `stages/` holds one Ray Data stage
per file, and `report.py` and `metrics.py` describe what the written output holds. A row
gets its score in `stages/score.py` (or `stages/vllm_score.py`) through the engines' shared
`judgement.py`, and is kept or rejected in `stages/decide.py`.
"""
