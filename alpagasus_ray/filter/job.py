"""The filter job: read -> skip done -> the judge (`filter/judge.py`) -> write, then report
and manifest. Streaming end to end on Ray Data: the driver only ever sees counts."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from alpagasus_ray.core.errors import InvariantError
from alpagasus_ray.core.runtime import ended_nodes, init_ray, package_versions
from alpagasus_ray.data.heartbeat import Heartbeat
from alpagasus_ray.data.io import (
    DATA_DIR,
    READ_LOG_DIR,
    check_claim,
    claim_output,
    filesystem,
    is_local,
    join,
    prepare_output,
    read_log_records,
    read_output_table,
)
from alpagasus_ray.data.listing import Listing
from alpagasus_ray.data.read import read_input
from alpagasus_ray.data.schema import DECISION, DECISIONS, NUM_OUTPUT_TOKENS, NUM_PROMPT_TOKENS
from alpagasus_ray.engines.vllm import served_model_name
from alpagasus_ray.engines.vllm_metrics import read_prefix_cache
from alpagasus_ray.filter.carried import output_json_text, scan_kinds
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.criteria import criteria_types, prompt_identity
from alpagasus_ray.filter.duplicates import settle_duplicates
from alpagasus_ray.filter.judge import judge_dataset
from alpagasus_ray.filter.ledger import start_ledger
from alpagasus_ray.filter.manifest import (
    Manifest,
    commit,
    counts_of,
    data_files,
    file_entries,
    judge_record,
    listed_files,
    remove_files,
    remove_unlisted,
    unlisted,
)
from alpagasus_ray.filter.metrics import engine_metrics, stage_metrics
from alpagasus_ray.filter.preflight import conflicting_columns, preflight
from alpagasus_ray.filter.progress import ProgressLine, input_rows, input_sizes
from alpagasus_ray.filter.redecide import decision_threshold, redecide, redecide_finished
from alpagasus_ray.filter.repeated_ids import quarantine_repeated_ids
from alpagasus_ray.filter.report import write_report
from alpagasus_ray.filter.resources import check_resources
from alpagasus_ray.filter.resume import (
    attempt_files,
    check_rerun,
    fingerprint,
    resume_state,
)
from alpagasus_ray.filter.rubric_file import with_rubric_file
from alpagasus_ray.filter.shared_storage import OnSharedDisk, check_nodes_see, local_sizes
from alpagasus_ray.filter.stages.dedup import DUPLICATE
from alpagasus_ray.filter.stages.skip_done import SkipDoneStage

log = logging.getLogger(__name__)


def build_dataset(
    cfg: FilterJobConfig,
    served_name: str | None = None,
    listing: Listing | None = None,
    done: Any = None,
    progress: Any = None,
    api: Any = None,
    seen: Any = None,
    kinds: dict[str, str] | None = None,
    known: Any = None,
) -> Any:
    """The lazy Ray Dataset of decided rows, ready to be written. `served_name` names the vLLM
    replicas, whose metrics the job reads back by it; `listing` is the input preflight listed,
    so the job reads exactly the files it checked and counts; `done` (an object ref to row
    keys) the rows a resumed run has written already; `progress` counts decided rows; `api`
    the budget and key an API judge's replicas share (`engines.api_budget.JobAPI`); `seen`
    the contents judged so far (a `filter.duplicates.SeenContent`; the job passes its
    `filter.ledger.RunLedger` as both `progress` and `seen`), so that an exact
    duplicate is not judged again; `kinds` those of a record input's extra keys (`carried`);
    `known` the criteria a retried row had judged already (`filter.resume.resume_state`)."""
    light = cfg.ray.task_cpus
    rows_per_block = cfg.input.rows_per_block or cfg.judge.batch_size
    fs, root = filesystem(cfg.output.uri, cfg.storage)
    read_log = (fs, join(root, READ_LOG_DIR))
    ds = read_input(cfg.input, cfg.storage, light, rows_per_block, read_log, listing, progress)
    if done is not None:
        ds = ds.map_batches(SkipDoneStage(done), batch_format="pyarrow", num_cpus=light)
    # Columns whose types differ across files are carried as JSON text (footers only).
    as_json = conflicting_columns(listing) if listing else []
    return judge_dataset(
        ds,
        cfg.judge,
        cfg.filter.threshold,
        cfg.input.columns,
        cfg.ray,
        rule=cfg.filter.rule,
        api=api,
        seen=seen,
        known=known,
        progress=progress,
        served_name=served_name,
        json_columns=as_json,
        carried_kinds=kinds,
    )


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass
class ReadCount:
    """What the run read: rows, files skipped (unreadable, or of no format read), listed
    files with no read record, and each input file with its format and rows."""

    rows: int
    skipped: list[dict[str, Any]]
    unread: list[str]
    files: list[dict[str, Any]]


def count_read(cfg: FilterJobConfig, fs: Any, root: str, listing: Listing) -> ReadCount:
    """The read tasks counted every file's rows as they read it (`read_log/`), so the input
    is read once. A run with `input.limit` stops reading mid-file; its rows are counted by
    reading that prefix once more (at most `limit` rows), and no file's own count is known.
    """
    records = read_log_records(fs, root)
    errors = (r for r in records.values() if r["error"])
    skipped = sorted([*listing.skipped, *errors], key=lambda r: r["path"])
    files = [
        {"path": path, "format": listing.formats[path].name,
         "rows": None if cfg.input.limit else records.get(path, {}).get("rows")}
        for path in listing.files
    ]  # fmt: skip
    if cfg.input.limit:
        rows_per_block = cfg.input.rows_per_block or cfg.judge.batch_size
        ds = read_input(cfg.input, cfg.storage, cfg.ray.task_cpus, rows_per_block, None, listing)
        return ReadCount(ds.count(), skipped, [], files)
    unread = [path for path in listing.files if path not in records]
    return ReadCount(sum(r["rows"] for r in records.values()), skipped, unread, files)


@dataclass
class Attempt:
    """One attempt at an output: where it starts from, and what it claims."""

    run_id: str
    prefix: str  # of this attempt's data file names
    attempts: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    done: Any = None  # an object ref to the keys of the rows the output holds already
    known: Any = None  # an object ref to the retried rows' criteria judged already
    before: int = 0  # those rows
    kept_files: set[str] = field(default_factory=set)  # the data files that stay
    judged_contents: Any = None  # a ref to content hash -> position of the row judged
    started: float = field(default_factory=time.time)


def start_attempt(
    cfg: FilterJobConfig,
    fs: Any,
    root: str,
    now: dict[str, Any],
    mode: str,
    previous: Manifest | dict[str, Any] | None,
) -> Attempt:
    """Take stock of the output and claim it: empty for a fresh run; for a resume, the
    rows an unfinished run wrote; for a retry, the rows a committed manifest lists."""

    if mode == "fresh":
        prepare_output(fs, root, cfg.output.overwrite)
    # The earlier attempts: from the committed manifest, or an unfinished run's marker.
    if isinstance(previous, Manifest):
        attempts = list(previous.attempts)
    else:
        attempts = (previous or {}).get("attempts", [])
    prefix = f"{uuid.uuid4().hex[:12]}-{len(attempts) + 1}"
    state = Attempt("", prefix, attempts, now)
    cleaned: dict[str, int] = {}
    if mode != "fresh":
        files = listed_files(root, previous) if mode == "retry" else data_files(fs, root)
        if mode == "retry":  # what an earlier change left when it died
            remove_unlisted(fs, root, files)
        state.done, cleaned, state.kept_files, state.judged_contents, state.known = resume_state(
            fs, root, files, prefix, mode == "retry", cfg.ray.task_cpus, cfg.judge
        )
        state.before = cleaned["rows_kept"]
        if attempts and mode == "resume":  # what the attempt that was cut off left behind
            attempts[-1]["rows_written"] = state.before - attempts[-1]["rows_before"]
    attempts.append({"started_at": _utc(state.started), "rows_before": state.before, **cleaned})
    state.run_id = claim_output(fs, root, {"fingerprint": state.fingerprint, "attempts": attempts})
    fs.makedirs(join(root, READ_LOG_DIR), exist_ok=True)
    return state


def run_files(fs: Any, root: str, state: Attempt) -> list[str]:
    """The data files of the output this attempt makes: those it kept at its start and
    those it wrote, less the copies `settle_duplicates` has settled and removed."""
    copies = f"/{DECISION}={DUPLICATE}/"
    files = state.kept_files | set(attempt_files(fs, root, state.prefix))
    return sorted(f for f in files if copies not in f or fs.exists(f))


@dataclass
class Run:
    """A prepared run: its config, output, input listing, attempt and the helper actors
    its stages share, and the lazy dataset that writing runs."""

    cfg: FilterJobConfig
    fs: Any
    root: str
    listing: Listing
    state: Attempt
    ds: Any
    ledger: Any  # the run's ledger actor (filter/ledger.py): progress, contents seen
    api: Any  # the API judge's shared budget, or None
    served_name: str | None  # the vLLM replicas' name, whose metrics are read back
    ended_before: dict[str, str]  # the nodes that had ended before this run
    kinds: dict[str, str] | None  # of a record input's extra keys (filter/carried.py)


def run_filter(cfg: FilterJobConfig) -> Manifest:
    """Run the whole job; returns the manifest, whose commit ends it. A mistake, or another
    run writing the output now, is refused in seconds, before Ray or the output is touched;
    from then on the output's heartbeat says this run is writing it."""
    cfg = cfg.model_copy(update={"judge": with_rubric_file(cfg.judge, cfg.storage)})
    listing = preflight(cfg)
    fs, root = filesystem(cfg.output.uri, cfg.storage)
    with Heartbeat(fs, root):
        run = prepare_run(cfg, fs, root, listing)
        if isinstance(run, Manifest):  # complete already, or re-decided from the stored scores
            return run
        metrics = write_rows(run)
        return finish_run(run, metrics)


def prepare_run(cfg: FilterJobConfig, fs: Any, root: str, listing: Listing) -> Run | Manifest:
    """Decide what the run does to its output, claim it, and build the stream; a
    re-decision is done here, with no judge call."""
    now = fingerprint(cfg, listing)  # the input files' identities: a stat (or HEAD) each
    mode, previous = check_rerun(cfg, fs, root, now)
    if mode == "done":  # finished with these very settings: nothing to do
        return previous.found_complete()
    if mode == "redecide":  # only filter.threshold / keep_fraction changed: no judge call
        return redecide_finished(cfg, fs, root, now)
    init_ray(cfg.ray)
    check_resources(cfg)  # a replica the cluster cannot run fails here, not after hours

    state = start_attempt(cfg, fs, root, now, mode, previous)
    local_root = root if is_local(fs) else None
    check_nodes_see(local_root, local_sizes(listing))  # a node's own disk?
    ended_before = ended_nodes()
    served_name = served_model_name() if cfg.judge.engine == "vllm" else None
    ledger = start_ledger(state.judged_contents)  # progress, and the contents judged
    api = None
    if cfg.judge.engine == "openai":  # one rate limit and cost cap for every replica
        from alpagasus_ray.engines.api_budget import job_api

        api = job_api(cfg.judge, fs, root)  # its spending kept in the output
    rows = cfg.input.rows_per_block or cfg.judge.batch_size
    kinds = scan_kinds(cfg.input, cfg.storage, listing, cfg.ray.task_cpus, rows)
    ds = build_dataset(cfg, served_name, listing, state.done, ledger, api, ledger, kinds,
                       state.known)  # fmt: skip
    if local_root:  # for the nodes that join later: where each batch is written
        on_disk = OnSharedDisk(local_root)
        ds = ds.map_batches(on_disk, batch_format="pyarrow", num_cpus=cfg.ray.task_cpus)
    return Run(cfg, fs, root, listing, state, ds, ledger, api, served_name, ended_before, kinds)


def write_rows(run: Run) -> dict[str, Any]:
    """Stream every row through the judge into the output's data files, with a progress
    line, then settle the exact copies; returns the run's timings and Ray's figures."""
    import ray
    from ray.data.datasource import FilenameProvider

    cfg, fs, root, state, ledger = run.cfg, run.fs, run.root, run.state, run.ledger
    kept_before = counts_of(file_entries(fs, root, sorted(state.kept_files))).get("kept", 0)
    rows_fn = partial(input_rows, cfg.input.limit, run.listing)
    sizes_fn = partial(input_sizes, run.listing)
    with ProgressLine(ledger, rows_fn, (state.before, kept_before), sizes=sizes_fn):
        run.ds.write_parquet(
            join(root, DATA_DIR),
            filesystem=fs,
            partition_cols=[DECISION],
            max_rows_per_file=cfg.output.max_rows_per_file,
            ray_remote_args={"num_cpus": cfg.ray.task_cpus},
            filename_provider=FilenameProvider(dataset_uuid=state.prefix, file_format="parquet"),
        )
        scored = time.time()
        check_claim(fs, root, state.run_id)
        # Each copy takes its original's judgement; the last progress line counts its kept.
        live = run_files(fs, root, state)
        criteria = tuple(criteria_types(cfg.judge))
        settled = settle_duplicates(fs, root, state.prefix, live, cfg.ray.task_cpus, criteria)
        ledger.add.remote(0, settled.get("kept", 0))
    if run.api is not None:
        run.api.stop_if_over_budget(cfg.judge.api)  # no manifest: a rerun judges the rows not sent
    if cfg.ray.verbose:  # Ray's per-operator figures: dozens of lines, for debugging
        log.info("pipeline stats:\n%s", run.ds.stats())
    state.attempts[-1]["batches_decided_again"] = ray.get(ledger.batches_reported_again.remote())
    ended = ended_nodes()
    state.attempts[-1]["nodes_ended"] = sorted(
        v for k, v in ended.items() if k not in run.ended_before
    )
    return {"stages": stage_metrics(run.ds), "scored": scored}


def finish_run(run: Run, metrics: dict[str, Any]) -> Manifest:
    """Decide (a keep fraction needs every score), count, and commit the manifest that
    lists the attempt's data files; then retire the files it no longer lists."""
    cfg, fs, root, state = run.cfg, run.fs, run.root, run.state
    live = run_files(fs, root, state)
    if cfg.input.columns.id:  # a user's ids: each row after an id's first is quarantined
        live, _ = quarantine_repeated_ids(fs, root, live)
    read = count_read(cfg, fs, root, run.listing)
    rows_read, skipped, unread = read.rows, read.skipped, read.unread
    threshold = decision_threshold(cfg, fs, root, live)
    if threshold != cfg.filter.threshold:  # keep_fraction: decided now that all are scored
        live, _ = redecide(fs, root, live, threshold, cfg)
    entries = file_entries(fs, root, live)
    counts = counts_of(entries)
    judge = judge_record(cfg)
    report = write_report(fs, root, live, cfg.report, threshold, {**judge, "input": cfg.input.uri},
                          skipped)  # fmt: skip
    total = sum(counts.values())
    state.attempts[-1]["rows_written"] = total - state.before
    stale = unlisted(fs, root, live)
    if stale:  # written late by an earlier attempt, or replaced by this one
        state.attempts[-1]["late_files_removed"] = len(stale)
    invariant = f"rows_read ({rows_read}) == kept + rejected + quarantined + failed ({total})"
    if unread:
        invariant += f"; {len(unread)} input files not read to their end, e.g. {unread[0]}"
    ok = rows_read == total and not unread
    scored, started, finished = metrics["scored"], state.started, time.time()
    manifest = Manifest(
        status="complete" if ok else "inconsistent",
        rows_read=rows_read,
        counts={d: counts.get(d, 0) for d in DECISIONS},
        invariant=invariant,
        invariant_ok=ok,
        skipped_files=skipped,
        input_files=read.files,
        json_text_columns=output_json_text(fs, root, live, run.listing, run.kinds),
        kept_fraction=report["kept_fraction"],
        duplicates=report.get("duplicates", 0),
        judge=judge,
        prompt_hash=prompt_identity(cfg.judge),
        engine_metrics=judge_throughput(run, live, scored - started),
        stages=metrics["stages"],
        threshold=threshold,
        keep_fraction=cfg.filter.keep_fraction,
        rows_per_s=round(rows_read / max(scored - started, 1e-9), 3),
        timings_s={
            "score_and_write": round(scored - started, 3),
            "count_and_report": round(finished - scored, 3),
            "total": round(finished - started, 3),
        },
        started_at=_utc(started),
        attempts=state.attempts,
        fingerprint=state.fingerprint,
        files=entries,
        versions=package_versions(),
        config=cfg.redacted(),
    )
    check_claim(fs, root, state.run_id)
    commit(fs, root, manifest)
    remove_files(fs, stale)
    if not ok:
        raise InvariantError(invariant)
    return manifest


def judge_throughput(run: Run, live: list[str], seconds: float) -> dict[str, Any]:
    """The engine's tokens and rates over the run, from the rows' token counts, with vLLM's
    prefix-cache hit rate when its replicas exported one."""
    tokens = read_output_table(
        run.fs, run.root, live, columns=[NUM_PROMPT_TOKENS, NUM_OUTPUT_TOKENS]
    )
    prefix_cache = read_prefix_cache(run.served_name) if run.served_name else None
    return engine_metrics(tokens, seconds, run.cfg.judge, prefix_cache)
