"""An OpenAI-compatible API as a judge engine: the official `openai` SDK's async client,
many requests in flight per replica, one job-wide budget (`api_budget.py`). Once the cost cap
is reached, rows are no longer sent but still flow to the output as `engine_error` (nothing
paid for is lost), and the job then stops without a manifest, so a rerun with a higher cap
judges exactly those.

Retries are the SDK's: 408, 409, 429, 5xx, timeouts and lost connections are retried with
exponential backoff and jitter, and a server's `Retry-After` is honoured (up to two
minutes). What is still wrong after the retries, and any other 4xx, fails that row alone
(`engine_error`, with the status and the server's message); so does a 200 that is no usable
completion (no choices, a null answer, a body that is not JSON), with what was wrong in it;
the job goes on. When most of the recent requests fail, the breaker stops the job: a wrong
URL or a revoked key should cost seconds, not a million rows of errors.

Logprobs mode reads the score digits from the first answer token's top-k log-probabilities
(`top_logprobs`, by the tokens' text, so no tokenizer is needed): an API returns no more
than its top k, so a digit outside them counts as 0 and a row whose digits hold too little
of the probability fails as `low_score_mass`, as in the other engines, never with a
guessed score.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.core.errors import JudgeAPIStopped
from alpagasus_ray.engines.api_budget import JobAPI
from alpagasus_ray.engines.base import JudgeEngine, JudgeOutput
from alpagasus_ray.engines.parse import score_line_regex
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale, scale_scores

CHARS_PER_TOKEN = 4  # a prompt's tokens, estimated when no tokenizer is configured
TEMPLATE_TOKENS = 16  # at most, per chat message: a template's role header and separators
NOT_SENT = "not sent"  # a row the cost cap kept from the server: engine_error, so retried


def api_key(cfg: JudgeConfig) -> str:
    """The key, from the environment variable the config names; never from the config."""
    name = cfg.api.api_key_env
    return os.environ.get(name, "") if name else ""


def redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def digit_of(token: str, scale: Scale = PAPER_SCALE) -> int | None:
    """The score a token spells ("4", " 4", "▁4"; "10" where the scale has it), or None."""
    t = token.strip().lstrip("▁Ġ")
    if not (t.isascii() and t.isdigit()) or str(int(t)) != t:
        return None  # "four", "4.", "04"
    return int(t) if scale[0] <= int(t) <= scale[1] else None


def digit_logprobs(
    top: Sequence[tuple[str, float]], scale: Scale = PAPER_SCALE
) -> dict[int, float]:
    """Top-k (token text, logprob) -> score -> log P(score), spellings summed."""
    probs: dict[int, float] = {}
    for token, lp in top:
        d = digit_of(token, scale)
        if d is not None and lp is not None:
            probs[d] = probs.get(d, 0.0) + math.exp(lp)
    return {d: math.log(p) for d, p in probs.items() if p > 0}


def estimate_tokens(messages: list[dict[str, str]] | None, text: str | None) -> int:
    """A prompt's tokens as most tokenizers count English (the dry run's expectation)."""
    chars = sum(len(m.get("content", "")) for m in messages or []) + len(text or "")
    return max(1, chars // CHARS_PER_TOKEN)


def tokens_at_most(messages: list[dict[str, str]] | None, text: str | None) -> int:
    """A bound on a prompt's tokens without its tokenizer, for the cost cap: byte-level
    tokenizers give at most one token per UTF-8 byte, plus the chat template's tokens."""
    parts = [m.get("content", "") for m in messages or []] + [text or ""]
    return sum(len(p.encode()) for p in parts) + TEMPLATE_TOKENS * (len(messages or []) + 1)


class APIEngine(JudgeEngine):
    """One per replica. `judge` takes each row's request (`{"messages": [...]}` for the chat
    endpoint, `{"prompt": text}` for completions) and, when a tokenizer is configured, its
    token ids, which the completions endpoint sends instead of the text and which size the
    token budget."""

    def __init__(self, cfg: JudgeConfig, job: JobAPI | None = None):
        super().__init__(cfg)
        import openai

        self.openai = openai
        self.budget = job.budget if job else None  # None: no limits, no cost cap
        self.key = job.key.get_secret_value() if job else api_key(cfg)
        self.loop = asyncio.new_event_loop()
        self.client = openai.AsyncOpenAI(
            base_url=cfg.api.base_url,
            api_key=self.key or "EMPTY",
            max_retries=cfg.api.max_retries,
            timeout=cfg.api.timeout_s,
        )
        self.recent: deque[str | None] = deque(maxlen=cfg.api.breaker_window)
        self.answer_tokens = cfg.answer_tokens()

    @property
    def score_tokens(self) -> dict[int, int]:
        return {s: s for s in scale_scores(self.cfg.scale)}  # its "token ids": the scores

    def judge(
        self,
        prompts: Sequence[Sequence[int] | None],
        requests: Sequence[str | None] | None = None,
    ) -> list[JudgeOutput]:
        reqs = [json.loads(r) if r else {} for r in requests or [None] * len(prompts)]
        return self.loop.run_until_complete(self._judge_all(prompts, reqs))

    async def _judge_all(self, prompts: Sequence[Any], reqs: list[dict]) -> list[JudgeOutput]:
        gate = asyncio.Semaphore(self.cfg.api.max_concurrency)

        async def one(ids: Any, req: dict) -> JudgeOutput:
            async with gate:
                out = await self._one(ids, req)
            if out is not None:
                self._breaker(out)
                return out
            return JudgeOutput(error=f"{NOT_SENT}: the next request would pass judge.api.max_cost")

        return list(await asyncio.gather(*(one(p, r) for p, r in zip(prompts, reqs, strict=True))))

    async def _one(self, ids: Sequence[int] | None, req: dict) -> JudgeOutput | None:
        """One row's request; None when the cost cap leaves no room for it (not sent).

        Its cost is reserved at its most before it goes (exact prompt tokens with a
        tokenizer, `tokens_at_most` without) and settled with the server's usage as soon as
        it is answered, whatever the answer (`_failure`)."""
        api, reserved = self.cfg.api, 0.0
        if self.budget is not None:
            tokens = len(ids) if ids else tokens_at_most(req.get("messages"), req.get("prompt"))
            reserved = api.cost(tokens, self.answer_tokens)
            wait = await self.budget.reserve.remote(tokens + self.answer_tokens, reserved)
            if wait is None:
                return None
            await asyncio.sleep(wait)
        actual = reserved  # what a request cut off here (cancelled) is counted at
        try:
            out = await self._call(ids, req)
            actual = api.cost(out.num_prompt_tokens or 0, out.num_output_tokens)
        except Exception as e:
            out, actual = self._failure(e, reserved)
        finally:  # even a reply nobody foresaw frees its reservation
            if self.budget is not None:
                await self.budget.settle.remote(reserved, actual)
        return out

    def _failure(self, e: Exception, reserved: float) -> tuple[JudgeOutput, float]:
        """A failed request's row error, and the cost it is counted at: a refusal (4xx, 5xx)
        is not billed; a request lost to a timeout or a dropped connection may have been, so
        it stays at its reservation; a 200 that is no usable completion (`BadReply`, or a
        body the SDK could not read) was answered: at its usage, or its reservation."""
        if isinstance(e, self.openai.APIStatusError):
            return JudgeOutput(error=redact(f"HTTP {e.status_code}: {_message(e)}", self.key)), 0.0
        cost = reserved
        if isinstance(e, self.openai.APIError):
            what = f"{type(e).__name__}: {e}"
        elif isinstance(e, BadReply):
            what = f"unexpected reply: {e}"
            cost = reserved if e.usage is None else self.cfg.api.cost(*e.usage)
        else:
            what = f"unexpected reply: {type(e).__name__}: {e}"
        return JudgeOutput(error=redact(what, self.key)), cost

    async def _call(self, ids: Sequence[int] | None, req: dict) -> JudgeOutput:
        cfg, api = self.cfg, self.cfg.api
        args: dict[str, Any] = {"model": cfg.model, "max_tokens": self.answer_tokens}
        args["temperature"] = 0.0
        if cfg.stop():
            args["stop"] = cfg.stop()
        if cfg.structured_score:  # vLLM's server takes a regex for the answer
            args["extra_body"] = {"structured_outputs": {"regex": score_line_regex(cfg.scale)}}
        if api.endpoint == "chat":
            if cfg.mode == "logprobs":
                args.update(logprobs=True, top_logprobs=api.top_logprobs)
            res = await self.client.chat.completions.create(messages=req["messages"], **args)
            choice = _first_choice(res)
            text = choice.message.content if choice.message else None
            content = choice.logprobs.content if choice.logprobs else None
            top = [(t.token, t.logprob) for t in content[0].top_logprobs] if content else None
            where = "choices[0].message.content"
        else:
            if cfg.mode == "logprobs":
                args["logprobs"] = api.top_logprobs
            prompt = list(ids) if ids else req["prompt"]
            res = await self.client.completions.create(prompt=prompt, **args)
            choice = _first_choice(res)
            text = choice.text
            lp = choice.logprobs
            top = list(lp.top_logprobs[0].items()) if lp and lp.top_logprobs else None
            where = "choices[0].text"
        usage = res.usage
        out = JudgeOutput(
            text=text,
            num_output_tokens=usage.completion_tokens if usage else 0,
            num_prompt_tokens=usage.prompt_tokens if usage else None,
        )
        if cfg.mode == "generate" and text is None:
            raise BadReply(f"{where} is null", _usage(res))
        if cfg.mode == "logprobs":
            if top is None:
                out.error = "the server returned no log-probabilities for the answer token"
            else:
                out.logprobs = digit_logprobs(top, cfg.scale)
        return out

    def close(self) -> None:
        """Close the client's connections on the engine's own loop, then the loop."""
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def _breaker(self, out: JudgeOutput) -> None:
        """Stop the job when most of the recent requests failed."""
        self.recent.append(out.error)
        window, rate = self.cfg.api.breaker_window, self.cfg.api.breaker_failure_rate
        failed = sum(e is not None for e in self.recent)
        if len(self.recent) == window and failed >= rate * window:
            raise JudgeAPIStopped(
                "judge.api.base_url",
                f"{failed} of the last {window} requests to {self.cfg.api.base_url} failed, "
                f"the last with: {out.error or next(e for e in self.recent if e)}",
            )


class BadReply(Exception):
    """A 200 that is no usable completion: its row fails, the rest of the batch goes on.
    `usage`: the (prompt, answer) tokens the reply still reported, to charge them."""

    def __init__(self, what: str, usage: tuple[int, int] | None = None):
        super().__init__(what)
        self.usage = usage


def _usage(res: Any) -> tuple[int, int] | None:
    usage = getattr(res, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    return None if prompt is None else (prompt, getattr(usage, "completion_tokens", 0) or 0)


def _first_choice(res: Any) -> Any:
    """The reply's first choice, or BadReply saying why there is none."""
    choices = getattr(res, "choices", None)
    if not isinstance(choices, list):
        raise BadReply(f"not a completion: {' '.join(str(res).split())[:200]!r}")
    if not choices:
        raise BadReply("no choices (an empty `choices` list)", _usage(res))
    return choices[0]


def _message(e: Any) -> str:
    """The server's own message: `{"error": {"message": ...}}` or `{"message": ...}`."""
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner["message"]).split())[:500]
    return " ".join(str(e.message).split())[:500]
