"""The API judge against vLLM's own OpenAI-compatible server on 127.0.0.1 (vLLM lane), and
behind a fault-injecting proxy: both modes and both endpoints against the HF engine on the
same model, the filter and the evaluation end to end, retries and per-row failures, the
job-wide rate limit, the breaker, the cost cap, the dry run, and the key kept out of sight."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, cli_refusal
from fault_proxy import BAD_REPLIES, FaultProxy, Rule
from helpers import CODE_RUBRIC, write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import SCORE_LINE_TOKENS, JudgeConfig
from alpagasus_ray.data.io import MANIFEST, prepare_output
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.engines.api import APIEngine, tokens_at_most
from alpagasus_ray.engines.api_budget import SPEND_FILE
from alpagasus_ray.engines.hf import HFEngine
from alpagasus_ray.engines.parse import parse_score
from alpagasus_ray.text.prompts import rating_messages, rating_prompt_ids

pytestmark = pytest.mark.vllm


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)


@pytest.fixture
def proxy():
    proxies: list[FaultProxy] = []

    def start(server, *rules: Rule) -> tuple[FaultProxy, str]:
        p = FaultProxy(server.root, list(rules))
        proxies.append(p)
        return p, p.start()

    yield start
    for p in proxies:
        p.stop()


def api_judge(base_url: str, model: str, **kw) -> JudgeConfig:
    api = {"base_url": base_url, **kw.pop("api", {})}
    return JudgeConfig(engine="openai", model=model, api=api, **kw)


def digit_probs(logprobs: dict[int, float], score_tokens: dict[int, int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for token, lp in logprobs.items():
        d = score_tokens[token]
        out[d] = out.get(d, 0.0) + math.exp(lp)
    return out


def test_logprobs_through_the_api_equal_hf_on_the_same_tokens(smol_server, smollm2, key):
    """Completions endpoint with the prompt stage's token ids: every digit the server returns
    in its top 20 has the probability the HF engine computes over the full vocabulary. (Plain
    prompts, no chat template: SmolLM2 then answers with digits in its top 20, where after
    its chat template it often starts with "<".)"""
    rows = synthetic_examples(12, seed=21)
    hf_cfg = JudgeConfig(model=str(smollm2), dtype="float32", micro_batch_size=4)
    hf = HFEngine(hf_cfg)
    ids = rating_prompt_ids(hf.tokenizer, rows, "accuracy", "prefix", use_chat_template=False)
    cfg = api_judge(smol_server.base_url, "smol", tokenizer=str(smollm2),
                    api={"endpoint": "completions"})  # fmt: skip
    api = APIEngine(cfg)
    got = api.judge(ids, [None] * len(ids))
    want = hf.judge(ids)
    compared = 0
    for g, w in zip(got, want, strict=True):
        assert g.error is None and g.num_output_tokens == 1
        assert g.num_prompt_tokens is not None
        ref = digit_probs(w.logprobs, hf.score_tokens)
        assert g.logprobs, "no score digit in the top 20"
        for digit, lp in g.logprobs.items():
            assert math.exp(lp) == pytest.approx(ref[digit], rel=2e-3, abs=1e-6)
            compared += 1
    assert compared >= 3 * len(rows)
    assert [g.num_prompt_tokens for g in got] == [len(i) for i in ids]  # the ids we sent
    api.close()


@pytest.mark.parametrize("stop", [False, True])
def test_generate_mode_through_the_api_equals_hf(tiny_server, vllm_tiny, stop):
    """`stop`: judge.stop_after_score_line, a stop sequence the server applies (vLLM's own
    stop handling) against the HF engine's stop strings: the same text, the same tokens."""
    rows = synthetic_examples(12 if stop else 6, seed=22)
    longer = {"max_new_tokens": 40, "stop_after_score_line": True} if stop else {}
    hf = HFEngine(JudgeConfig(model=str(vllm_tiny), mode="generate", dtype="float32",
                              **{"max_new_tokens": 12, **longer}))  # fmt: skip
    ids = rating_prompt_ids(hf.tokenizer, rows, "accuracy", "prefix")
    cfg = api_judge(tiny_server.base_url, "tiny", mode="generate",
                    api={"endpoint": "completions", "api_key_env": None},
                    **{"max_new_tokens": 12, **longer})  # fmt: skip
    api = APIEngine(cfg)
    got = api.judge(ids, [None] * len(ids))
    for g, w in zip(got, hf.judge(ids), strict=True):
        assert g.error is None
        assert g.text.rstrip("\ufffd") == w.text.rstrip("\ufffd")
        assert g.num_output_tokens == w.num_output_tokens
    if stop:  # some answers did stop at a line break, before the token cap
        assert any(g.num_output_tokens < SCORE_LINE_TOKENS for g in got)
    api.close()


def test_structured_scores_through_the_api_always_parse(smol_server, key):
    """`judge.structured_score` against vLLM's server: the regex rides in the request's
    extra body, and every answer starts with a score that parses."""
    rows = synthetic_examples(8, seed=26)
    cfg = api_judge(smol_server.base_url, "smol", mode="generate", max_new_tokens=12,
                    structured_score=True, rubric=CODE_RUBRIC)  # fmt: skip
    messages = [rating_messages(*(r[k] for k in ("instruction", "input", "output")),
                                CODE_RUBRIC, "prefix") for r in rows]  # fmt: skip
    api = APIEngine(cfg)
    got = api.judge([None] * len(rows), [json.dumps({"messages": m}) for m in messages])
    api.close()
    for g in got:
        assert g.error is None and parse_score(g.text) is not None, g.text
        assert re.fullmatch(r"[0-5](\.[0-9]?)?", g.text.split("\n")[0]), g.text


def filter_job(tmp_path: Path, rows: list, base_url: str, model: str, *sets: str) -> list[str]:
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    (tmp_path / "job.yaml").write_text("{}\n")
    args = ["filter", "--config", str(tmp_path / "job.yaml"), "--set", f"input.uri={src}"]
    args += ["--set", f"output.uri={tmp_path / 'out'}"]
    base = [
        "judge.engine=openai",
        f"judge.model={model}",
        f"judge.api.base_url={base_url}",
        "judge.min_score_mass=0.0",
        "judge.batch_size=8",
        "judge.num_cpus_per_replica=0.25",
    ]
    for item in [*base, *sets]:
        args += ["--set", item]
    return args


def test_filter_end_to_end_with_an_api_judge(
    ray_session, smol_server, smollm2, key, tmp_path, capsys
):
    """A user's rubric file, judged by the API: the server counts the prompts we rendered
    with it, token for token."""
    rows = synthetic_examples(24, seed=23, unique=True) + [{"instruction": "no output"}, "{broken"]
    rubric = tmp_path / "code.txt"
    rubric.write_text(CODE_RUBRIC)
    args = filter_job(tmp_path, rows, smol_server.base_url, "smol", f"judge.tokenizer={smollm2}",
                      "judge.api.price_input_per_mtok=2", "judge.api.price_output_per_mtok=8",
                      "judge.replicas=2", f"judge.rubric_file={rubric}")  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr()
    out = tmp_path / "out"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["rows_read"] == 26
    assert manifest["counts"]["quarantined"] == 2
    table = pq.read_table(out / "data", partitioning="hive").to_pylist()
    judged = [r for r in table if r["decision"] in ("kept", "rejected")]
    assert len(judged) + manifest["counts"]["failed"] == 24
    assert [r["reason_detail"] for r in table if r["reason"] == "engine_error"] == []
    # The server counted the prompts we rendered locally, token for token.
    from alpagasus_ray.text.models import load_tokenizer

    tok = load_tokenizer(str(smollm2))
    want = sorted(map(len, rating_prompt_ids(tok, rows[:24], CODE_RUBRIC, "prefix")))
    assert want != sorted(map(len, rating_prompt_ids(tok, rows[:24], "accuracy", "prefix")))
    assert manifest["judge"]["rubric_text"] == CODE_RUBRIC
    assert sorted(r["num_prompt_tokens"] for r in table if r["num_prompt_tokens"]) == want
    metrics = manifest["engine_metrics"]
    cost = (metrics["input_tokens"] * 2 + metrics["output_tokens"] * 8) / 1e6
    assert metrics["cost"] == pytest.approx(cost) and metrics["output_tokens"] == 24
    # The key is in no file of the output and in nothing printed.
    for f in out.rglob("*"):
        if f.is_file():
            assert API_KEY.encode() not in f.read_bytes(), f
    assert API_KEY not in printed.out + printed.err


# The client's timeout in the tests of timeouts: far above an ordinary request here (well
# under a second; 30 s is past 10x that on a loaded machine), and the request the proxy
# holds ("slow") is held far past it, until the client gives up: so only the rows a test
# names ever time out, however slow the machine.
TIMEOUT_S = 30.0
SLOW = Rule("slow", marker="FAULT-SLOW", attempts=1, delay=10 * TIMEOUT_S)


def marked(rows: list[dict], *markers: str) -> list[dict]:
    """`rows` with the first ones' instructions starting with `markers`, one each."""
    for row, marker in zip(rows, markers, strict=False):
        row["instruction"] = f"{marker}: {row['instruction']}"
    return rows


def test_faults_are_retried_or_fail_their_row_alone(ray_session, tiny_server, proxy, tmp_path):
    rows = marked(synthetic_examples(30, seed=24, unique=True),
                  "FAULT-400", "FAULT-500", "FAULT-SLOW", "FAULT-DROP")  # fmt: skip
    p, url = proxy(
        tiny_server,
        Rule("400", marker="FAULT-400"),
        Rule("500", marker="FAULT-500"),
        SLOW,
        Rule("drop", marker="FAULT-DROP", attempts=1),
        Rule("429", every=5, retry_after=1.0),
        Rule("500", every=7),
    )
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.max_retries=3",
                      f"judge.api.timeout_s={TIMEOUT_S}", "judge.api.max_concurrency=4",
                      "judge.api.api_key_env=null")  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "out"
    manifest = json.loads((out / MANIFEST).read_text())
    c = manifest["counts"]
    assert manifest["rows_read"] == 30 == c["kept"] + c["rejected"] + c["quarantined"] + c["failed"]
    table = pq.read_table(out / "data", partitioning="hive").to_pylist()
    by_marker = {m: next(r for r in table if r["instruction"].startswith(m))
                 for m in ("FAULT-400", "FAULT-500", "FAULT-SLOW", "FAULT-DROP")}  # fmt: skip
    bad = by_marker["FAULT-400"]
    assert (bad["decision"], bad["reason"]) == ("failed", "engine_error")
    assert bad["reason_detail"].startswith("HTTP 400: injected 400")
    assert p.count(marker="FAULT-400") == 1  # a 400 is not retried
    down = by_marker["FAULT-500"]
    assert down["reason"] == "engine_error" and down["reason_detail"].startswith("HTTP 500")
    assert p.count(marker="FAULT-500") == 4  # the first try and 3 retries
    for m in ("FAULT-SLOW", "FAULT-DROP"):  # retried (within max_retries), then judged
        assert by_marker[m]["reason"] != "engine_error" and 2 <= p.count(marker=m) <= 4
    slow = [h.at for h in p.hits if "FAULT-SLOW" in h.body]
    assert slow[1] - slow[0] >= TIMEOUT_S  # the retry came after the client's timeout
    others = [r for r in table if not r["instruction"].startswith("FAULT-")]
    assert all(r["reason"] != "engine_error" for r in others)
    # Every 429 was honoured: the same request came back no sooner than its Retry-After.
    assert p.count("429") >= 5
    for i, hit in enumerate(p.hits):
        if hit.action == "429":
            again = next(h for h in p.hits[i + 1 :] if h.body == hit.body)
            assert again.at - hit.at >= 0.95


def test_retry_failed_judges_again_only_the_rows_the_api_failed(
    ray_session, tiny_server, proxy, tmp_path
):
    """A finished run with rows the server refused (HTTP 400), then `--retry-failed` with
    the server healthy: only those rows are sent again, and they are judged; every other
    row stays as it was."""
    rows = marked(synthetic_examples(20, seed=26, unique=True), "FAULT-400", "FAULT-400B")
    p, url = proxy(tiny_server, Rule("400", marker="FAULT-400"))
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.api_key_env=null")
    assert main(args) == 0
    out = tmp_path / "out"
    first = {r["id"]: r for r in pq.read_table(out / "data", partitioning="hive").to_pylist()}
    failed = {i for i, r in first.items() if r["reason"] == "engine_error"}
    assert len(failed) == 2 and p.count("400") == 2
    hits = len(p.hits)
    assert main(args) == 0  # a plain rerun of a finished output: complete already
    assert not [h for h in p.hits[hits:] if h.body]  # nothing judged again
    healthy, url2 = proxy(tiny_server)
    again = [a.replace(url, url2) for a in args] + ["--retry-failed"]
    assert main(again) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["rows_read"] == 20
    sent = [h for h in healthy.hits if h.body]  # not preflight's look at /v1/models
    assert len(sent) == 2 and all("FAULT-400" in h.body for h in sent)  # nothing else
    assert manifest["attempts"][-1]["engine_errors_retried"] == 2
    after = {r["id"]: r for r in pq.read_table(out / "data", partitioning="hive").to_pylist()}
    assert after.keys() == first.keys()
    for i, row in after.items():
        if i in failed:
            # judged now: a score, or the judge's own verdict on it (the tiny model's top
            # tokens often hold no digit: low_score_mass), never the server's refusal
            assert row["reason"] != "engine_error" and row["num_prompt_tokens"], row
        else:
            assert (row["decision"], row["score"]) == (first[i]["decision"], first[i]["score"])


def billed(p: FaultProxy, prices: tuple[float, float], answer_tokens: int = 0) -> float:
    """What the requests the proxy saw cost at `prices` per 1M (prompt, answer) tokens: a
    reply's usage where it has one, else the most its request could cost (its reservation
    without a tokenizer), as the engine counts a reply it could not read."""
    total = 0.0
    for h in p.hits:
        if not h.body:
            continue
        try:
            usage = json.loads(h.reply)["usage"]
            tokens = usage["prompt_tokens"], usage["completion_tokens"]
        except ValueError:
            tokens = tokens_at_most(json.loads(h.body)["messages"], None), answer_tokens
        total += (tokens[0] * prices[0] + tokens[1] * prices[1]) / 1e6
    return total


def test_an_unexpected_reply_fails_its_row_alone_and_settles_its_cost(
    ray_session, tiny_server, proxy, tmp_path
):
    """200s that are no usable completion: no choices, a null answer, a body that is not
    JSON, an HTML page. Each fails its row, the rest of its batch is judged, and each is
    settled: at the usage it reported, or at its reservation."""
    bad = {f"FAULT-{a.upper()}": a for a in BAD_REPLIES}
    rows = marked(synthetic_examples(12, seed=31, unique=True), *bad)  # all in the first batch
    p, url = proxy(tiny_server, *(Rule(a, marker=m) for m, a in bad.items()))
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.api_key_env=null",
                      "judge.mode=generate", "judge.max_new_tokens=8",
                      "judge.api.price_input_per_mtok=1000", "judge.api.price_output_per_mtok=1000",
                      "judge.api.max_cost=1000")  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "out"
    table = pq.read_table(out / "data", partitioning="hive").to_pylist()
    said = {
        "FAULT-EMPTY": "no choices",
        "FAULT-NULL": "choices[0].message.content is null",
        "FAULT-NOTJSON": "JSONDecodeError",
        "FAULT-HTML": "not a completion: '<html>",
    }
    for m, what in said.items():
        row = next(r for r in table if r["instruction"].startswith(m))
        assert (row["decision"], row["reason"]) == ("failed", "engine_error"), row
        detail = row["reason_detail"]
        assert detail.startswith("unexpected reply: ") and what in detail, detail
    others = [r for r in table if not r["instruction"].startswith("FAULT-")]
    assert len(others) == 8 and all(r["reason"] != "engine_error" for r in others)
    assert sum(1 for h in p.hits if h.body) == 12  # one request a row: none retried
    spend = json.loads((out / SPEND_FILE).read_text())
    assert spend["reserved"] == pytest.approx(0.0, abs=1e-9)  # every reservation settled
    assert spend["spent"] == pytest.approx(billed(p, (1000.0, 1000.0), 8), rel=1e-9)


def test_the_rate_limit_holds_for_all_replicas_together(ray_session, tiny_server, proxy, tmp_path):
    p, url = proxy(tiny_server)
    rows = synthetic_examples(30, seed=25, unique=True)
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.api_key_env=null",
                      "judge.replicas=2", "judge.api.requests_per_minute=240")  # fmt: skip
    assert main(args) == 0
    posts = [h.at for h in p.hits if h.body]
    assert len(posts) == 30
    rate = (len(posts) - 1) / (posts[-1] - posts[0])
    assert rate <= 4.0 * 1.05  # 240 a minute, spread over both replicas
    # And not far below it: requests go one every 0.25 s, except where a replica waits for
    # the server to finish its batch (3 of the 29 gaps at most), which a loaded machine may
    # make as long as it likes, so the median gap, not the overall rate.
    gaps = sorted(b - a for a, b in zip(posts, posts[1:], strict=False))
    assert gaps[len(gaps) // 2] <= 0.25 * 1.5


def test_the_breaker_stops_the_job_when_most_requests_fail(
    ray_session, tiny_server, proxy, tmp_path, capsys
):
    p, url = proxy(tiny_server, Rule("401", after=12))  # a key revoked mid-run
    rows = synthetic_examples(400, seed=26, unique=True)
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.api_key_env=null",
                      "judge.api.breaker_window=16", "judge.api.max_concurrency=4")  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err.startswith("alpagasus-ray filter: judge API stopped the job (judge.api.base_url): ")
    assert "of the last 16 requests" in err and "HTTP 401: injected 401" in err
    assert p.count() < 200  # stopped long before the 400 rows were sent
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_max_cost_stops_before_spending_more_and_a_rerun_goes_on(
    ray_session, tiny_server, vllm_tiny, tmp_path, capsys
):
    rows = synthetic_examples(48, seed=27, unique=True)
    prices = ["judge.api.price_input_per_mtok=1000", "judge.api.api_key_env=null",
              f"judge.tokenizer={vllm_tiny}", "judge.api.max_concurrency=2"]  # fmt: skip
    args = filter_job(tmp_path, rows, tiny_server.base_url, "tiny", *prices,
                      "judge.api.max_cost=2.0")  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert err.startswith("alpagasus-ray filter: judge API stopped the job (judge.api.max_cost)")
    assert "rows were not sent" in err
    out = tmp_path / "out"
    assert not (out / MANIFEST).exists()
    written = pads.dataset(out / "data", partitioning="hive").to_table().to_pylist()
    assert len(written) == 48  # every row reached the output: nothing paid for is lost
    sent = [r for r in written if not (r["reason_detail"] or "").startswith("not sent")]
    spent = sum(r["num_prompt_tokens"] * 1000 / 1e6 for r in sent)
    assert 0 < spent <= 2.0 and 0 < len(sent) < 48
    assert main(args[:-2] + ["--set", "judge.api.max_cost=100"]) == 0  # the same job, more money
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete" and len(manifest["attempts"]) == 2
    assert manifest["attempts"][1]["engine_errors_retried"] == 48 - len(sent)
    assert manifest["attempts"][1]["rows_written"] == 48 - len(sent)


def test_max_cost_holds_over_a_resume(ray_session, tiny_server, vllm_tiny, proxy, tmp_path, capsys):
    """A run stopped by its cost cap, rerun unchanged: the rerun starts with what the first
    spent (`SPEND_FILE`, in the output), so both together stay within the one cap."""
    p, url = proxy(tiny_server)
    rows = synthetic_examples(48, seed=32, unique=True)
    args = filter_job(tmp_path, rows, url, "tiny", "judge.api.price_input_per_mtok=1000",
                      "judge.api.api_key_env=null", f"judge.tokenizer={vllm_tiny}",
                      "judge.api.max_concurrency=2", "judge.api.max_cost=2.0")  # fmt: skip
    assert main(args) == 1
    first = billed(p, (1000.0, 0.0))
    assert 0 < first <= 2.0
    spend = json.loads((tmp_path / "out" / SPEND_FILE).read_text())
    assert spend["spent"] == pytest.approx(first, rel=1e-9)
    assert spend["reserved"] == pytest.approx(0.0, abs=1e-9)
    assert main(args) == 1  # rows are still left, and the cap is still the cap
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "rows were not sent" in err
    both = billed(p, (1000.0, 0.0))  # the reservations are exact with a tokenizer: no slack
    assert first <= both <= 2.0 + 1e-9
    assert f"spent {both:.4f} of 2;" in err
    spend = json.loads((tmp_path / "out" / SPEND_FILE).read_text())
    assert spend["spent"] == pytest.approx(both, rel=1e-9)


def test_dry_run_counts_and_prices_without_a_call(
    ray_session, tiny_server, vllm_tiny, proxy, tmp_path, capsys
):
    p, url = proxy(tiny_server)
    rows = synthetic_examples(20, seed=28, unique=True) + [{"instruction": "no output"}]
    tok = ["judge.api.api_key_env=null", "judge.api.price_input_per_mtok=3"]
    args = filter_job(tmp_path, rows, url, "tiny", *tok, f"judge.tokenizer={vllm_tiny}")
    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    from alpagasus_ray.text.models import load_tokenizer

    tokens = sum(map(len, rating_prompt_ids(load_tokenizer(str(vllm_tiny)), rows[:20],
                                            "accuracy", "prefix")))  # fmt: skip
    assert "rows read        21" in printed and "rows to judge    20" in printed
    assert f"prompt tokens    {tokens:,} (counted with the judge's tokenizer)" in printed
    assert f"expected cost    at most {tokens * 3 / 1e6:.4f}" in printed
    assert p.count() == 0 and not (tmp_path / "out").exists()
    assert main([*filter_job(tmp_path, rows, url, "tiny", *tok), "--dry-run"]) == 0
    assert "estimated at 4 characters a token (no judge.tokenizer)" in capsys.readouterr().out
    assert p.count() == 0


def test_mistakes_are_refused_before_any_row(smol_server, tmp_path, capsys, monkeypatch):
    rows = synthetic_examples(4, seed=29, unique=True)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-0123456789")
    job = filter_job(tmp_path, rows, smol_server.base_url, "smol")
    err, _ = cli_refusal(capsys, job, before_ray=True)
    assert err.startswith("alpagasus-ray filter: judge API key (judge.api.api_key_env): the "
                          "server refused the key in $OPENAI_API_KEY: HTTP 401")  # fmt: skip
    assert "sk-wrong-0123456789" not in err
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    err, _ = cli_refusal(capsys, filter_job(tmp_path, rows, smol_server.base_url, "smol-typo"))
    assert err == (f"alpagasus-ray filter: judge model (judge.model): 'smol-typo' is not served "
                   f"at {smol_server.base_url}; it serves: smol")  # fmt: skip
    closed = "http://127.0.0.1:9/v1"
    err, _ = cli_refusal(capsys, filter_job(tmp_path, rows, closed, "smol"))
    assert err.startswith(
        f"alpagasus-ray filter: judge API (judge.api.base_url): cannot use {closed}"
    )
    monkeypatch.delenv("OPENAI_API_KEY")
    err, _ = cli_refusal(capsys, filter_job(tmp_path, rows, smol_server.base_url, "smol"))
    assert err.startswith("alpagasus-ray filter: judge API key (judge.api.api_key_env): "
                          "$OPENAI_API_KEY is not set")  # fmt: skip
    assert not (tmp_path / "out").exists()


def api_evaluation(
    tmp_path: Path, models_url: str, judge_url: str, local: Path | None = None, **api: Any
) -> Any:
    """Two served names of one model answer 6 questions (and `local` on its own HF engine,
    compared with the first); `api` adds to generation.api."""
    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.evaluate.config import EvalConfig

    questions = [{"id": i, "question": r["instruction"], "input": r["input"]}
                 for i, r in enumerate(synthetic_examples(6, seed=30, unique=True))]  # fmt: skip
    test_set = write_jsonl(tmp_path / "questions.jsonl", questions)
    cfg = {
        "models": [{"name": "a", "path": "tiny"}, {"name": "b", "path": "tiny-b"}],
        "generation": {"engine": "openai", "max_new_tokens": 16, "num_cpus_per_replica": 0.25,
                       "api": {"base_url": models_url, "endpoint": "completions",
                               "api_key_env": None, **api}},
        "judge": {"engine": "openai", "model": "smol", "max_new_tokens": 24,
                  "num_cpus_per_replica": 0.25, "api": {"base_url": judge_url}},
        "test_sets": [{"name": "mine", "path": str(test_set), "question": "question", "id": "id",
                       "input": "input"}],
        "output": {"uri": str(tmp_path / "eval"), "overwrite": True},
    }  # fmt: skip
    if local is not None:
        cfg["models"].append({"name": "local", "path": str(local), "engine": "hf"})
        cfg["pairs"] = [["a", "b"], ["local", "a"]]
    return build_config(EvalConfig, cfg)


def test_evaluation_with_api_models_and_an_api_judge(
    ray_session, tiny_server, smol_server, vllm_tiny, key, tmp_path
):
    """Two models on vLLM's server and one on the HF engine of its own, in one evaluation."""
    from alpagasus_ray.evaluate.job import run_evaluate

    cfg = api_evaluation(tmp_path, tiny_server.base_url, smol_server.base_url, vllm_tiny)
    manifest = run_evaluate(cfg)
    assert manifest["status"] == "complete" and manifest["checks"]["ok"]
    assert manifest["questions"] == 6 and manifest["judgments"] == 24  # 2 pairs, both orders
    answers = pads.dataset(str(tmp_path / "eval" / "answers")).to_table().to_pylist()
    for r in answers:  # one model under two names: the same greedy answer
        assert r["answer__a"] and r["answer__a"] == r["answer__b"]
        assert r["answer_tokens__a"] > 0
        assert r["answer__local"] and 0 < r["answer_tokens__local"] <= 16  # its own engine
    assert [(p["model_a"], p["model_b"]) for p in manifest["results"]] == [
        ("a", "b"),
        ("local", "a"),
    ]
    judgments = pads.dataset(str(tmp_path / "eval" / "judgments")).to_table().to_pylist()
    assert all(j["status"] in ("ok", "unparseable") for j in judgments)
    assert all(j["judge_text"] for j in judgments)


def test_an_evaluation_stops_at_a_models_cost_cap_before_judging(
    ray_session, tiny_server, smol_server, key, tmp_path
):
    from alpagasus_ray.core.errors import JudgeAPIStopped
    from alpagasus_ray.evaluate.job import run_evaluate

    cap = {"price_input_per_mtok": 1000, "max_cost": 0.4, "max_concurrency": 1}
    cfg = api_evaluation(tmp_path, tiny_server.base_url, smol_server.base_url, **cap)
    with pytest.raises(JudgeAPIStopped) as stopped:
        run_evaluate(cfg)
    line = str(stopped.value)
    assert line.startswith("model API stopped the job (generation.api.max_cost): spent ")
    assert "were not sent (error rows in answers/)" in line
    answers = pads.dataset(str(tmp_path / "eval" / "answers")).to_table().to_pylist()
    assert len(answers) == 6  # every question is in the answers, sent or not
    for model in ("a", "b"):  # each model's answers have a cap of their own
        sent = [r for r in answers if r[f"answer_error__{model}"] is None]
        cut = [r for r in answers if (r[f"answer_error__{model}"] or "").startswith("not sent")]
        assert sent and cut and len(sent) + len(cut) == 6
    assert 0 < float(line.split("spent ")[1].split(" of ")[0]) <= 0.4  # never over the cap
    assert not (tmp_path / "eval" / "judgments").exists()  # nothing judged on cut answers
    assert not (tmp_path / "eval" / "manifest.json").exists()
    # The rerun its line asks for ("... and output.overwrite") may replace what it wrote.
    prepare_output(fsspec.filesystem("file"), str(tmp_path / "eval"), overwrite=True)
    assert not (tmp_path / "eval" / "answers").exists()


def test_each_turn_through_the_api_scores_as_that_turn_rated_alone(
    ray_session, smol_server, smollm2, key, tmp_path
):
    """Conversations through vLLM's OpenAI server: one chat request per judged turn; each
    turn's score equals its conversation cut after it, rated alone (`last`)."""
    from test_vllm_engine import conversations

    chats, cut = conversations(6, seed=37)
    scores = {}
    for name, rows, extra in (("each", chats, ["judge.turns=each"]), ("alone", cut, [])):
        sets = ["input.columns.messages=messages", "input.columns.id=row", *extra]
        args = filter_job(tmp_path / name, rows, smol_server.base_url, "smol", *sets)
        assert main(args) == 0
        table = pq.read_table(tmp_path / name / "out" / "data", partitioning="hive")
        scores[name] = {r["id"]: r for r in table.to_pylist()}
    assert len(scores["each"]) == len(chats) and len(scores["alone"]) == len(cut)
    for rid, row in scores["each"].items():
        want = [scores["alone"][f"{rid}-{k}"]["score"] for k in range(len(row["turn_scores"]))]
        assert len(want) == len(json.loads(row["messages"])) // 2
        assert row["turn_scores"] == pytest.approx(want, abs=1e-3), rid
        assert row["score"] == pytest.approx(min(want), abs=1e-3)


def test_criteria_through_the_api_score_as_each_rubric_alone(
    ray_session, smol_server, smollm2, key, tmp_path
):
    """`judge.criteria` through vLLM's OpenAI server: one request per criterion and row,
    each criterion's score (on its own scale) the score its rubric gets alone."""
    rows = synthetic_examples(6, seed=41, unique=True)
    nine = "Rate the answer from 0 to 9; the score first.\n{instruction}\n{output}"
    criteria = {"accuracy": {"rubric": "accuracy"}, "correct": {"rubric": nine, "scale": [0, 9]}}
    runs = {"both": [f"judge.criteria={json.dumps(criteria)}", "filter.threshold=2.5"],
            "accuracy": ["judge.rubric=accuracy"],
            "correct": [f"judge.rubric={json.dumps(nine)}", "judge.scale=[0, 9]"]}  # fmt: skip
    scores = {}
    for name, sets in runs.items():
        args = filter_job(tmp_path / name, rows, smol_server.base_url, "smol",
                          "judge.layout=row_first", f"judge.tokenizer={smollm2}",
                          *sets)  # fmt: skip
        assert main(args) == 0
        table = pq.read_table(tmp_path / name / "out" / "data", partitioning="hive")
        scores[name] = {r["id"]: r for r in table.to_pylist()}
    assert len(scores["both"]) == 6
    for rid, row in scores["both"].items():
        for name in criteria:
            assert row[f"score_{name}"] == pytest.approx(scores[name][rid]["score"], abs=1e-3)
        alone = [scores[name][rid]["num_prompt_tokens"] for name in criteria]
        assert row["num_prompt_tokens"] == sum(alone)  # as the server counted them


def test_retry_failed_judges_again_only_the_criterion_the_api_failed(
    ray_session, smol_server, smollm2, key, proxy, tmp_path
):
    """Two criteria; the server refuses (HTTP 400) the helpfulness request of two rows
    only, so those rows fail naming it, with their accuracy judged. `--retry-failed` sends
    exactly those two helpfulness requests again (no accuracy one) and keeps the accuracy
    scores it had."""
    rows = synthetic_examples(8, seed=27, unique=True)
    for row in rows[:2]:
        row["output"] += " FAULT-400Z"  # the row's end, then (row first) the rubric's start
    marker = "FAULT-400Z\\n</example>\\n\\nPlease rate according to the helpfulness"
    p, url = proxy(smol_server, Rule("400", marker=marker))
    criteria = {"accuracy": {"rubric": "accuracy"}, "helpfulness": {"rubric": "helpfulness"}}
    sets = [f"judge.criteria={json.dumps(criteria)}", "filter.threshold=2.5"]
    args = filter_job(tmp_path, rows, url, "smol", f"judge.tokenizer={smollm2}", *sets)
    assert main(args) == 0
    out = tmp_path / "out"
    first = {r["id"]: r for r in pq.read_table(out / "data", partitioning="hive").to_pylist()}
    failed = {i for i, r in first.items() if r["reason"] == "engine_error"}
    assert len(failed) == 2 and p.count("400") == 2
    for i in failed:
        assert first[i]["reason_detail"].startswith("criterion helpfulness: ")
        assert first[i]["score_accuracy"] is not None and first[i]["score_helpfulness"] is None
    healthy, url2 = proxy(smol_server)
    assert main([a.replace(url, url2) for a in args] + ["--retry-failed"]) == 0
    sent = [h.body for h in healthy.hits if h.body]  # not preflight's look at /v1/models
    assert len(sent) == 2 and all(marker in body for body in sent)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["attempts"][-1]["criterion_scores_reused"] == 2
    after = {r["id"]: r for r in pq.read_table(out / "data", partitioning="hive").to_pylist()}
    assert after.keys() == first.keys() and manifest["status"] == "complete"
    for i, row in after.items():
        assert row["score_accuracy"] == first[i]["score_accuracy"], i  # never judged again
        if i in failed:
            assert row["score_helpfulness"] is not None and row["decision"] in ("kept", "rejected")
        else:
            assert (row["decision"], row["score"]) == (first[i]["decision"], first[i]["score"])
