"""Run `alpagasus-ray ARGS...` and SIGKILL the process at one named point: a crash at an
exact step of a state change, for the crash tests (`test_commit.py`).

    python crash_driver.py WHEN:MODULE.ATTR[#N] ARGS...

WHEN is `before` or `after` the N-th call (default 1) of the function ATTR as MODULE
(under `alpagasus_ray.`) calls it; ATTR may be a class's method (`Class.method`). The
process kills itself, as an out-of-memory killer or a lost node would: no `finally`, no
`atexit`, nothing flushed. WHEN `hold` stalls the process before that call instead, and
`hold-after` after it, until something else ends it: a test that loses a node mid-run holds
the job there, so a fast machine cannot finish the job before the loss.

A WHEN that starts with `workers-` (`workers-hold-after`) arms the point in every Ray worker
process of the job instead (a Ray Train worker's callback, say), through Ray's
`worker_process_setup_hook`, while the driver runs as it is.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from typing import Any


def owner_of(target: str) -> tuple[Any, str]:
    """(module or class, attribute name) for `MODULE.ATTR` or `MODULE.Class.method`."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module("alpagasus_ray." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ValueError(f"no module in {target!r}")


def arm_in_workers(point: str) -> None:
    """Arm `point` in each Ray worker process the job starts, not in this driver."""
    import ray

    real_init = ray.init

    def setup() -> None:  # pickled by value: this file is not importable in the workers
        arm(point)

    def init(*args: Any, **kwargs: Any) -> Any:
        env = dict(kwargs.pop("runtime_env", None) or {})
        env["worker_process_setup_hook"] = setup
        return real_init(*args, runtime_env=env, **kwargs)

    ray.init = init


def arm(point: str) -> None:
    when, _, target = point.partition(":")
    if when.startswith("workers-"):
        return arm_in_workers(when.removeprefix("workers-") + ":" + target)
    target, _, nth = target.partition("#")
    owner, attr = owner_of(target)
    real, calls, wanted = getattr(owner, attr), [0], int(nth or 1)

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
        if when == "hold-after" and calls[0] == wanted:
            hold()
        return result

    setattr(owner, attr, wrapped)


def main() -> int:
    arm(sys.argv[1])
    from alpagasus_ray.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
