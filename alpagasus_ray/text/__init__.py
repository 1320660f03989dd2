"""Prompts and tokenization: the paper's rating prompts (`prompts.py`), loading a model and
its tokenizer (`models.py`), the driver's tokenizer checks, run in a child (`tokenizer_probe.py`),
and the prompt stage's exact, faster token ids (`bpe_cache.py`)."""
