"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real OpenAI-compatible server.

It forwards every request unchanged, except where a rule answers instead: 429 with a
`Retry-After`, 500, 400, 401, a slow answer, a dropped connection, or a 200 that is no
usable completion (`BAD_REPLIES`). Rules match by the request's number (every n-th request)
or by a marker in its body (one row's text), and may apply only to a row's first attempts,
so retries can be checked to succeed. A slow answer is held until its `delay` or until the
client gives up, whichever is first, so a test can make the delay far longer than the
client's timeout without waiting for it. Every request is logged (time, body, what was done,
the reply's body), for the tests' counts, rates and costs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import ClientSession, web


@dataclass
class Rule:
    action: str  # "429", "500", "400", "401", "slow", "drop", or one of BAD_REPLIES
    marker: str | None = None  # match requests whose body holds this text
    every: int | None = None  # or every n-th request (1-based), retries included, except
    # requests whose body holds `spare` (the rows other rules are about)
    spare: str | None = "FAULT-"
    after: int = 0  # only from the (after+1)-th request on
    attempts: int | None = None  # only a marked body's first n attempts; None: always
    retry_after: float = 1.0  # 429's Retry-After, seconds
    delay: float = 3.0  # "slow": seconds before forwarding (less if the client leaves)


@dataclass
class Hit:
    at: float
    body: str
    action: str  # a rule's action, or "ok"
    reply: str = ""  # the body sent back ("" when none was)


# 200s that are no usable completion: the upstream's reply with no choices, or with a null
# answer text (and its usage kept), a JSON body that does not parse, an HTML page.
BAD_REPLIES = ("empty", "null", "notjson", "html")


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:8000 (no /v1)
    rules: list[Rule] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    def start(self) -> str:
        """Serve on a free loopback port in a thread; returns the base URL with /v1."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._session = ClientSession()
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, shutdown_timeout=2.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop)
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def count(self, action: str | None = None, marker: str | None = None) -> int:
        return sum(
            1
            for h in self.hits
            if (action is None or h.action == action) and (marker is None or marker in h.body)
        )

    def _rule_for(self, n: int, body: str) -> Rule | None:
        for rule in self.rules:
            if n <= rule.after:
                continue
            if rule.marker is not None and rule.marker in body:
                seen = sum(1 for h in self.hits if rule.marker in h.body)
                if rule.attempts is None or seen < rule.attempts:
                    return rule
            elif (
                rule.marker is None
                and (rule.every is None or n % rule.every == 0)
                and (rule.spare is None or rule.spare not in body)
            ):
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        n = len(self.hits) + 1
        rule = self._rule_for(n, body) if request.method == "POST" else None
        action = rule.action if rule else "ok"
        hit = Hit(time.monotonic(), body, action)
        self.hits.append(hit)
        error = {"error": {"message": f"injected {action}", "type": "injected", "code": action}}
        if action == "429":
            headers = {"Retry-After": f"{rule.retry_after:g}"}
            return web.json_response(error, status=429, headers=headers)
        if action in ("500", "400", "401"):
            return web.json_response(error, status=int(action))
        if action == "drop":
            request.transport.close()  # the connection goes, no answer
            raise ConnectionResetError("dropped")
        if action == "notjson":
            return _reply(hit, b'{"id": "cmpl-1", "choices": [', "application/json")
        if action == "html":
            return _reply(hit, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        if action == "slow" and not await _held(request, rule.delay):
            return web.Response(status=499)  # the client gave up: nothing to forward
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        url = self.upstream + request.path_qs
        async with self._session.request(
            request.method, url, data=body.encode(), headers=headers
        ) as up:
            data = await up.read()
            ctype = up.headers.get("Content-Type", "application/json").split(";")[0]
            if action in ("empty", "null") and up.status == 200:
                data = _spoiled(data, action)
            return _reply(hit, data, ctype, up.status)


async def _held(request: web.Request, delay: float) -> bool:
    """Hold a "slow" request up to `delay` seconds; False when the client left first (its
    timeout fired), so a delay far past the timeout costs the test only the timeout."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        await asyncio.sleep(0.05)
    return True


def _spoiled(data: bytes, action: str) -> bytes:
    """The upstream's completion with no choices ("empty") or a null answer ("null")."""
    reply = json.loads(data)
    if action == "empty":
        reply["choices"] = []
    for choice in reply["choices"]:
        if "message" in choice:
            choice["message"]["content"] = None
        else:
            choice["text"] = None
    return json.dumps(reply).encode()


def _reply(hit: Hit, data: bytes, ctype: str, status: int = 200) -> web.Response:
    hit.reply = data.decode(errors="replace")
    return web.Response(body=data, status=status, content_type=ctype)
