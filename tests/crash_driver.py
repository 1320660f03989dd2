"""Run `alpagasus-ray ARGS...` and SIGKILL the process at one named point: a crash at an
exact step of a state change, for the crash tests (`test_commit.py`).

    python crash_driver.py WHEN:MODULE.ATTR[#N] ARGS...

WHEN is `before` or `after` the N-th call (default 1) of the function ATTR as MODULE
(under `alpagasus_ray.`) calls it. The process kills itself, as an out-of-memory killer or a
lost node would: no `finally`, no `atexit`, nothing flushed. WHEN `hold` stalls the process
before that call instead, until something else ends it: a test that loses a node mid-run
holds the job there, so a fast machine cannot finish the job before the loss.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from typing import Any


def arm(point: str) -> None:
    when, _, target = point.partition(":")
    target, _, nth = target.partition("#")
    module_name, attr = target.rsplit(".", 1)
    module = importlib.import_module(f"alpagasus_ray.{module_name}")
    real, calls, wanted = getattr(module, attr), [0], int(nth or 1)

    def die() -> None:
        sys.stderr.write(f"crash_driver: killed {point}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def hold() -> None:
        sys.stderr.write(f"crash_driver: holding {point}\n")
        sys.stderr.flush()
        while True:
            time.sleep(60)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if when == "hold" and calls[0] == wanted:
            hold()
        if when == "before" and calls[0] == wanted:
            die()
        result = real(*args, **kwargs)
        if when == "after" and calls[0] == wanted:
            die()
        return result

    setattr(module, attr, wrapped)


def main() -> int:
    arm(sys.argv[1])
    from alpagasus_ray.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
