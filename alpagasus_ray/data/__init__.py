"""Data in and out: the columns every output holds (`schema.py`), the Ray Data readers that
keep each row's file and position (`sources.py`), and the files and folders of inputs and
outputs on disk or S3 (`io.py`)."""
