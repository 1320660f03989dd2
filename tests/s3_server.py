"""moto's S3 server on 127.0.0.1 that checks credentials, in a process of its own (moto's
auth switch is process-wide); with no IAM users, every key is unknown. For the tests and
`benchmarks/bench_refusals.py`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from helpers import free_port


def start_s3_with_auth() -> tuple[subprocess.Popen, str]:
    """(the server process, its endpoint URL), once it accepts connections."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # moto's imports take a loaded machine a while
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"moto's S3 server did not start on port {port} (exit {server.poll()})")
