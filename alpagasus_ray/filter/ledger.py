"""The run's one bookkeeping actor beside its driver: what the read and decide tasks report
(`progress.ProgressCounter`) and the contents judged so far (`duplicates.SeenContent`).

One actor, not one each: an actor is a Python process of its own, and each of these takes a
few bytes a batch, so a second process a run is a start-up (about a CPU-second) and a
process for nothing. The two keep separate state and are asked by separate stages.
"""

from __future__ import annotations

from typing import Any

import ray

from alpagasus_ray.core.runtime import beside_driver
from alpagasus_ray.filter.duplicates import SeenContent
from alpagasus_ray.filter.progress import ProgressCounter


class RunLedger(ProgressCounter, SeenContent):
    """A `ProgressCounter` and a `SeenContent` (seeded with a resumed run's contents)."""

    def __init__(self, seen: dict[str, str] | None = None) -> None:
        ProgressCounter.__init__(self)
        SeenContent.__init__(self, seen)


def start_ledger(seen: dict[str, str] | None) -> Any:
    """The ledger actor of a run, on the driver's node (no CPU), as the handle the read,
    dedup and decide stages share."""
    return ray.remote(num_cpus=0)(RunLedger).options(**beside_driver()).remote(seen)
