"""What the driver needs to know of a judge's tokenizer, learnt in a child process.

Loading a tokenizer through transformers imports torch: a few hundred MB that the driver of
a million-row job would then hold for hours for one check. The child loads it the same way
the workers will (`models.load_tokenizer`), answers in one JSON line and exits.

Run as `python -m alpagasus_ray.text.tokenizer_probe NAME --scale LO,HI [--trust-remote-code]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from typing import Any

from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale

# A hang's guard, not a speed limit: a hub id's tokenizer files are a few MB and a local
# folder loads in seconds, but the child imports transformers and torch, which on a loaded
# machine took over 300 s (a CPU hog on 2 cores beside a Ray head) and refused a good job.
TIMEOUT_S = 1800


class TokenizerProbeError(Exception):
    """The tokenizer does not load; the message is the cause on one line."""


@lru_cache(maxsize=8)
def probe_tokenizer(
    name: str, trust_remote_code: bool = False, scale: Scale = PAPER_SCALE
) -> dict[str, Any]:
    """{"score_tokens": {token id: score} or None, "score_tokens_error": str or None}, for
    the scores of `scale`."""
    cmd = [sys.executable, "-m", "alpagasus_ray.text.tokenizer_probe", name, "--scale"]
    cmd.append(f"{scale[0]},{scale[1]}")
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    # The child imports this package from where the driver did, installed or not.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        raise TokenizerProbeError(f"loading it took over {TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()
        raise TokenizerProbeError(tail[-1] if tail else f"exit code {done.returncode}")
    facts = json.loads(lines[-1])
    if facts.get("error"):
        raise TokenizerProbeError(facts["error"])
    if facts["score_tokens"] is not None:  # JSON keys are text; token ids are ints
        facts["score_tokens"] = {int(k): v for k, v in facts["score_tokens"].items()}
    return facts


def _facts(name: str, trust_remote_code: bool, scale: Scale) -> dict[str, Any]:
    from alpagasus_ray.engines.judgement import score_token_ids
    from alpagasus_ray.text.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(name, trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; say which
        return {"error": " ".join(str(e).split())[:300] or type(e).__name__}
    try:
        return {"score_tokens": score_token_ids(tokenizer, scale), "score_tokens_error": None}
    except ValueError as e:
        return {"score_tokens": None, "score_tokens_error": str(e)}


if __name__ == "__main__":
    lo, hi = map(int, sys.argv[sys.argv.index("--scale") + 1].split(","))
    print(json.dumps(_facts(sys.argv[1], "--trust-remote-code" in sys.argv[2:], (lo, hi))))
