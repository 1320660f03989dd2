"""One budget for every replica of an API judge: requests and tokens per minute, and cost.

Rate limits and prices are the provider's, per key, not per actor: N replicas each holding
a share would waste what an idle one does not use, and autoscaling would change the shares.
So one small Ray actor holds the budget and hands out start times (a reservation, never a
blocking call): each request asks when it may go, sleeps that long on its own replica, and
goes. Requests are spaced evenly (no burst), so a window of any minute holds at most the
configured count. Cost is reserved before a request at its most (prompt + max answer
tokens) and settled with the usage the server reports as soon as it is answered, so
`max_cost` stops the job before it spends more, not after.

What was spent outlives the actor: it is kept in the output (`SPEND_FILE`), rewritten
atomically after each change (on an object store at most once a second: one PUT each), and
read back when the actor starts. So an actor that Ray restarts after losing its node goes on
from there (its requests in flight settle on it), and a resumed run starts with what every
earlier attempt spent (their requests in flight counted at their reservation, as a request
lost to a timeout is): `max_cost` holds over all the attempts at one output.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from alpagasus_ray.core.config import APIConfig, JudgeConfig
from alpagasus_ray.core.errors import JudgeAPIStopped

log = logging.getLogger(__name__)

SPEND_FILE = "api_spend.json"  # under the output root, rewritten whole (`io.write_atomic`)
REMOTE_FLUSH_S = 1.0  # on an object store, at most one write (a PUT) a second


@dataclass
class Budget:
    """The arithmetic, kept apart from Ray so that it can be read and tested alone."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_cost: float | None = None
    spent: float = 0.0  # settled cost
    reserved: float = 0.0  # cost of requests in flight, at their most
    requests: int = 0
    refused: int = 0
    _next_request: float = field(default=0.0, repr=False)
    _next_tokens: float = field(default=0.0, repr=False)

    def reserve(self, tokens: int, cost: float, now: float) -> float | None:
        """Seconds to wait before sending a request of `tokens`; None when its cost could
        take the job over `max_cost` (then nothing is reserved)."""
        if self.max_cost is not None and self.spent + self.reserved + cost > self.max_cost:
            self.refused += 1
            return None
        start = max(now, self._next_request, self._next_tokens)
        if self.requests_per_minute:
            self._next_request = start + 60.0 / self.requests_per_minute
        if self.tokens_per_minute:
            self._next_tokens = start + 60.0 * tokens / self.tokens_per_minute
        self.reserved += cost
        self.requests += 1
        return start - now

    def settle(self, reserved: float, actual: float) -> None:
        """A request is done: free what it reserved, count what it cost."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


@dataclass
class SpendFile:
    """Where a job's spending is kept: `path` on `fs` (the output's), written whole each time
    (a temp file then a rename on local disk, one PUT on an object store, so a reader never
    sees half of it), at most every `every_s` seconds."""

    fs: Any
    path: str
    every_s: float = 0.0
    _written: float = field(default=-math.inf, repr=False)

    def load(self) -> dict[str, Any] | None:
        from alpagasus_ray.data.io import read_json

        return read_json(self.fs, self.path) if self.fs.exists(self.path) else None

    def save(self, state: dict[str, Any], force: bool = False) -> None:
        """Write `state` unless the last write was under `every_s` ago."""
        now = time.monotonic()
        if not force and now - self._written < self.every_s:
            return
        from alpagasus_ray.data.io import write_atomic

        write_atomic(self.fs, self.path, json.dumps(state, default=str).encode())
        self._written = now


class BudgetActor:
    """The `Budget` of one job as a Ray actor (see `job_api`), kept in `spend` if given.
    `owner` names the job's actor across Ray's restarts of it; a resumed run's differs."""

    def __init__(self, api: APIConfig, spend: SpendFile | None = None, owner: str = ""):
        self.budget = Budget(api.requests_per_minute, api.tokens_per_minute, api.max_cost)
        self.spend, self.owner = spend, owner
        saved = spend.load() if spend else None
        if saved:
            self._restore(saved)

    def _restore(self, saved: dict[str, Any]) -> None:
        """A restart of this job's actor takes its counts back, reservations in flight too
        (they settle here); a new run takes only the spending, with the reservations no one
        will settle counted as spent."""
        b = self.budget
        if saved.get("owner") == self.owner:
            b.spent, b.reserved = saved["spent"], saved["reserved"]
            b.requests, b.refused = saved["requests"], saved["refused"]
        else:
            b.spent = saved["spent"] + saved["reserved"]
        self._save(force=True)

    def reserve(self, tokens: int, cost: float) -> float | None:
        wait = self.budget.reserve(tokens, cost, time.monotonic())
        self._save()
        return wait

    def settle(self, reserved: float, actual: float) -> None:
        self.budget.settle(reserved, actual)
        self._save()

    def totals(self) -> dict[str, Any]:
        """This attempt's counts and all attempts' spending; written out first."""
        self._save(force=True)
        b = self.budget
        return {"requests": b.requests, "spent": b.spent, "reserved": b.reserved,
                "refused": b.refused}  # fmt: skip

    def _save(self, force: bool = False) -> None:
        """Keep the counts in the output; a failed write is retried on the next change (the
        job goes on: the actor still holds them)."""
        if self.spend is None:
            return
        b = self.budget
        state = {"owner": self.owner, "spent": b.spent, "reserved": b.reserved,
                 "requests": b.requests, "refused": b.refused}  # fmt: skip
        try:
            self.spend.save(state, force=force)
        except OSError as e:
            log.warning("could not write %s: %s", self.spend.path, e)


@dataclass(frozen=True)
class JobAPI:
    """What the driver hands every replica of an API engine: the job's one budget actor, and
    the key read from the driver's environment (a worker on another node may not have the
    variable); a `SecretStr`, so no repr or log shows it."""

    budget: Any
    key: SecretStr

    def stop_if_over_budget(
        self,
        api: APIConfig,
        key: str = "judge.api.max_cost",
        where: str = "in the output as failed, engine_error",
        then: str = "rerun the same command with a higher max_cost to judge them",
    ) -> None:
        """After the write: rows the cost cap kept from the server end the job here, before
        a manifest would call the output finished. `key` names the cap, `where` says where
        the unsent rows are and `then` what to do."""
        import ray

        totals = ray.get(self.budget.totals.remote())
        if totals["refused"]:
            raise JudgeAPIStopped(
                key,
                f"spent {totals['spent']:.4f} of {api.max_cost:g}; {totals['refused']} rows "
                f"were not sent ({where}): {then}",
            )


def job_api(judge: JudgeConfig, fs: Any = None, root: str | None = None) -> JobAPI:
    """A new budget actor for one job (no CPU of its own, so it never waits for a slot),
    keeping its spending in `SPEND_FILE` under the output `root` on `fs` when given."""
    import ray
    from fsspec.implementations.local import LocalFileSystem

    from alpagasus_ray.data.io import join

    spend = None
    if fs is not None and root is not None:
        every = 0.0 if isinstance(fs, LocalFileSystem) else REMOTE_FLUSH_S
        spend = SpendFile(fs, join(root, SPEND_FILE), every)
    from alpagasus_ray.core.runtime import beside_driver

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(BudgetActor)
    actor = actor.options(**beside_driver())
    env = judge.api.api_key_env
    key = SecretStr(os.environ.get(env, "") if env else "")
    return JobAPI(actor.remote(judge.api, spend, uuid.uuid4().hex), key)
