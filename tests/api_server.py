"""vLLM's own OpenAI-compatible server on 127.0.0.1, for the API engine's tests (vLLM lane).

The `vllm serve` command fails on a package-metadata lookup in the CPU build, so the server
module is started directly, with the lane's own Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import free_port


class VLLMServer:
    def __init__(self, model: Path, names: list[str], log: Path, api_key: str | None = None):
        self.port, self.api_key, self.log = free_port(), api_key, log
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", *names, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", "2048", "--dtype", "float32", "--max-logprobs", "20",
               "--enforce-eager", "--disable-uvicorn-access-log"]  # fmt: skip
        if api_key:
            cmd += ["--api-key", api_key]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def wait(self, timeout: float = 300) -> VLLMServer:
        """Until the server answers; a server that does not (it exited, it is not ready in
        time, the wait is interrupted with Ctrl-C) is stopped, since no caller will."""
        try:
            return self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> VLLMServer:
        deadline = time.monotonic() + timeout
        req = urllib.request.Request(self.base_url + "/models")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(req, timeout=5):
                    return self
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"vLLM server not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
