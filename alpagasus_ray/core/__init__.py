"""What every job shares to start and to fail: the configuration every job's config is built
from (`config.py`), Ray's start-up and the watcher that ends what it leaves (`runtime.py`,
`reaper.py`), and the errors a command reports in one line (`errors.py`)."""
