"""One budget for every replica of an API judge: requests and tokens per minute, and cost.

Rate limits and prices are the provider's, per key, not per actor: N replicas each holding
a share would waste what an idle one does not use, and autoscaling would change the shares.
So one small Ray actor holds the budget and hands out start times (a reservation, never a
blocking call): each request asks when it may go, sleeps that long on its own replica, and
goes. Requests are spaced evenly (no burst), so a window of any minute holds at most the
configured count. Cost is reserved before a request at its most (prompt + max answer
tokens) and settled with the usage the server reports as soon as it is answered, so
`max_cost` stops the job before it spends more, not after.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from alpagasus_ray.config import APIConfig, JudgeConfig
from alpagasus_ray.errors import JudgeAPIStopped


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


class BudgetActor:
    """The `Budget` of one job as a Ray actor (see `budget_actor`)."""

    def __init__(self, api: APIConfig):
        self.budget = Budget(api.requests_per_minute, api.tokens_per_minute, api.max_cost)

    def reserve(self, tokens: int, cost: float) -> float | None:
        return self.budget.reserve(tokens, cost, time.monotonic())

    def settle(self, reserved: float, actual: float) -> None:
        self.budget.settle(reserved, actual)

    def totals(self) -> dict[str, Any]:
        b = self.budget
        return {"requests": b.requests, "spent": b.spent, "refused": b.refused}


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


def job_api(judge: JudgeConfig) -> JobAPI:
    """A new budget actor for one job (no CPU of its own, so it never waits for a slot)."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(BudgetActor)
    env = judge.api.api_key_env
    return JobAPI(actor.remote(judge.api), SecretStr(os.environ.get(env, "") if env else ""))
