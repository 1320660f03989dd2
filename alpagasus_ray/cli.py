"""`alpagasus-ray`: a thin command line over the library.

alpagasus-ray filter --config job.yaml [--set judge.model=... ...]
alpagasus-ray report OUTPUT_URI
alpagasus-ray demo [--output DIR]
alpagasus-ray train --config train.yaml
alpagasus-ray pipeline --config pipeline.yaml   (filter, then train on the kept rows)
alpagasus-ray experiment --config experiment.yaml (filter, train kept and all, judge pairwise)
alpagasus-ray evaluate --config evaluate.yaml
alpagasus-ray export OUTPUT_URI --format alpaca|messages|sharegpt|hf|parquet --to PATH
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any

from alpagasus_ray.core.config import ConfigError, load_config
from alpagasus_ray.core.errors import (
    CalibrationRefused,
    ExportRefused,
    InvariantError,
    JudgeAPIStopped,
    StorageNotShared,
    UnreadableInputError,
    first_line,
    missing_file_line,
)
from alpagasus_ray.data.heartbeat import OutputInUse
from alpagasus_ray.data.io import OutputTakenError, UnfinishedFilterOutput
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.filter.resources import ResourceError

if TYPE_CHECKING:
    from alpagasus_ray.filter.manifest import Manifest


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Ray's own logs and, on failure, the whole traceback (sets ray.verbose=true)",
    )
    return common


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML job config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set judge.model=Qwen/Qwen2.5-7B-Instruct",
    )


def _add_export_args(p: argparse.ArgumentParser) -> None:
    from alpagasus_ray.filter.export import FORMATS, SELECTIONS

    p.add_argument("output_uri", help="a finished filter output (local or s3://)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--to", required=True, help="destination file (a folder for hf), or s3://")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--decision", choices=SELECTIONS, help="rows to export (default: kept)")
    which.add_argument("--min-score", type=float, help="kept and rejected rows with score >= X")
    which.add_argument("--keep-fraction", type=float, help="the top F of the scored rows")
    p.add_argument("--extra-columns", action="store_true", help="add the input's own columns")
    p.add_argument("--system-prompt", help="a first system turn (--format messages, sharegpt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (else the AWS environment)")


def _add_calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_uri", nargs="?", help="a finished filter output (or use --config)")
    p.add_argument("--labels", required=True, help="reference labels: JSONL, JSON or Parquet")
    p.add_argument("--label", required=True, help="the label column: booleans, or scores")
    p.add_argument("--key", default="index", help="the label file's column naming the row")
    p.add_argument("--match", default="position", help="what --key holds: the row's position "
                   "in its input file (default), or an output column such as id")  # fmt: skip
    p.add_argument("--criterion", help="with judge.criteria: the criterion to measure "
                   "(its score_<name>, scale and threshold)")  # fmt: skip
    p.add_argument("--threshold", type=float, help="the judge's cut (default: the output's)")
    p.add_argument("--label-threshold", type=float, default=4.5, help="keep cut for scores")
    p.add_argument("--to", default="calibration", help="folder for the report (or s3://)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--config", help="judge the first --sample rows of this job's input first")
    p.add_argument("--sample", type=int, help="how many rows to judge with --config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (else the AWS environment)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpagasus-ray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_common()]
    add = functools.partial(sub.add_parser, parents=common)
    filt = add("filter", help="score, filter and write a dataset")
    _add_config_args(filt)
    filt.add_argument(
        "--dry-run",
        action="store_true",
        help="read and prompt the input, print rows, prompt tokens and the expected cost; "
        "no judge call, nothing written",
    )
    filt.add_argument(
        "--retry-failed",
        action="store_true",
        help="judge again the engine_error rows of a finished output (sets "
        "output.retry_failed=true); every other row stays as it is",
    )
    rep = add("report", help="regenerate the report of a finished output")
    rep.add_argument("output_uri")
    demo = add("demo", help="run the real pipeline offline on a tiny random judge")
    demo.add_argument("--output", default="demo-output", help="output directory")
    demo.add_argument("--rows", type=int, default=200, help="synthetic examples to filter")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    demo.add_argument(
        "--experiment",
        action="store_true",
        help="the paper's experiment on the demo's rows: filter, train on kept and on all "
        "rows, judge pairwise (minutes; tiny random models, so its numbers mean nothing)",
    )
    _add_export_args(add("export", help="write a finished output's rows for fine-tuning"))
    _add_calibrate_args(add("calibrate", help="how far the judge agrees with reference labels"))
    _add_config_args(add("evaluate", help="answer the test sets, judge pairwise"))
    _add_config_args(add("train", help="fine-tune a causal LM on the kept rows"))
    _add_config_args(add("pipeline", help="filter, then fine-tune on the kept rows"))
    _add_config_args(
        add("experiment", help="filter, fine-tune on the kept and on all rows, judge pairwise")
    )
    return parser


def cmd_filter(args: argparse.Namespace) -> dict[str, Any] | Manifest:
    from alpagasus_ray.filter.job import run_filter

    overrides = args.overrides + (["output.retry_failed=true"] if args.retry_failed else [])
    cfg = load_config(args.config, overrides, model=FilterJobConfig)
    if args.dry_run:
        from alpagasus_ray.filter.estimate import estimate, render

        result = estimate(cfg)
        print(render(result, cfg))
        return result
    manifest = run_filter(cfg)
    _print_summary(manifest, cfg.output.uri)
    return manifest


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.filter.report import regenerate

    report = regenerate(args.output_uri)
    print(json.dumps(report, indent=2))
    return report


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.core.config import StorageConfig
    from alpagasus_ray.filter.export import export

    result = export(
        args.output_uri,
        args.fmt,
        args.to,
        decision=args.decision or "kept",
        min_score=args.min_score,
        keep_fraction=args.keep_fraction,
        extra_columns=args.extra_columns,
        system_prompt=args.system_prompt,
        overwrite=args.overwrite,
        storage=StorageConfig(endpoint_url=args.endpoint_url),
    )
    print(f"exported {result['rows']} rows as {result['format']} to {result['to']}")
    return result


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.calibrate.job import calibrate
    from alpagasus_ray.core.config import StorageConfig

    output, storage = args.output_uri, StorageConfig(endpoint_url=args.endpoint_url)
    if (output is None) == (args.config is None):
        raise ConfigError("calibrate: give a finished output or --config (not both)")
    if args.config:
        from alpagasus_ray.filter.job import run_filter

        sample = [f"input.limit={args.sample}"] if args.sample else []
        cfg = load_config(args.config, args.overrides + sample, model=FilterJobConfig)
        output, storage = cfg.output.uri, cfg.storage
        _print_summary(run_filter(cfg), output)
    result = calibrate(output, args.labels, args.label, args.to, key=args.key,
                       match=args.match, threshold=args.threshold,
                       label_threshold=args.label_threshold, resamples=args.resamples,
                       storage=storage, criterion=args.criterion)  # fmt: skip
    from alpagasus_ray.calibrate.render import summary_line

    print(summary_line(result, args.to))
    return result


def cmd_demo(args: argparse.Namespace) -> Manifest | dict[str, Any]:
    from alpagasus_ray.demo import run_demo, run_demo_experiment

    if args.experiment:
        record = run_demo_experiment(args.output, args.rows, args.overrides)
        _print_experiment(record)
        return record
    manifest = run_demo(args.output, args.rows, args.overrides)
    _print_summary(manifest, manifest.config["output"]["uri"])
    return manifest


def _print_summary(manifest: Manifest, uri: str) -> None:
    c = manifest.counts
    rows = (
        f"rows read {manifest.rows_read} = kept {c['kept']} + rejected {c['rejected']} + "
        f"quarantined {c['quarantined']} + failed {c['failed']}"
    )
    if manifest.already_complete:  # one line: a scheduler's retry reads it as success
        retry = "; --retry-failed judges its engine_error rows again" if c["failed"] else ""
        print(f"{uri} is already complete with these settings, nothing to do: {rows}{retry}")
        return
    if again := manifest.redecided:
        print(
            f"re-decided from the stored scores at threshold {manifest.threshold:g} "
            f"(was {again.from_threshold:g}), no judge call: {again.changed}"
        )
    print(
        f"\n{rows}\n"
        f"outputs:  {uri}/data/decision=<kept|rejected|quarantined|failed>/\n"
        f"report:   {uri}/report.md  (score_histogram.png, report.json)\n"
        f"manifest: {uri}/manifest.json"
    )


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.evaluate.config import EvalConfig
    from alpagasus_ray.evaluate.job import run_evaluate
    from alpagasus_ray.evaluate.report import render_markdown

    cfg = load_config(args.config, args.overrides, model=EvalConfig)
    manifest = run_evaluate(cfg)
    print("\n" + render_markdown(manifest["results"]))
    print(f"report: {cfg.output.uri}/report.md (charts, report.json, outcomes.parquet)")
    return manifest


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.job import run_train

    summary = run_train(load_config(args.config, args.overrides, model=TrainConfig))
    _print_train_summary(summary)
    return summary


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.pipeline import PipelineConfig, run_pipeline

    cfg = load_config(args.config, args.overrides, model=PipelineConfig)
    result = run_pipeline(cfg)
    _print_summary(result["filter"], cfg.output.uri)
    _print_train_summary(result["finetune"])
    return result


def cmd_experiment(args: argparse.Namespace) -> dict[str, Any]:
    from alpagasus_ray.experiment.config import ExperimentConfig
    from alpagasus_ray.experiment.job import run_experiment

    record = run_experiment(load_config(args.config, args.overrides, model=ExperimentConfig))
    _print_experiment(record)
    return record


def _print_experiment(record: dict[str, Any]) -> None:
    from alpagasus_ray.experiment.report import REPORT_MD

    rows, models = record["rows"], record["models"]
    print(f"\nrows read {rows['read']}: model kept trained on {models['kept']['examples']}, "
          f"model all on {models['all']['examples']}")  # fmt: skip
    for r in record["evaluation"]["results"]:
        score = r["test_sets"]["all"]["winning_score"]
        shown = "n/a" if score is None else f"{score:.3f}"
        print(f"{r['model_a']} vs {r['model_b']}: winning score {shown} over all test sets")
    print(f"report: {record['experiment']}/{REPORT_MD}")


def _print_train_summary(summary: dict[str, Any]) -> None:
    print(
        f"\ntrained {summary['epochs_done']} epochs, {summary['steps']} steps on "
        f"{summary['examples']} examples ({summary['skipped_rows']} rows skipped); "
        f"loss {summary['first_epoch_loss']:.4f} -> {summary['last_epoch_loss']:.4f}; "
        f"{summary['tokens_per_s']:.0f} tokens/s, {summary['train_seconds']:.1f} s training\n"
        f"model:   {summary['export']}\nmetrics: {summary['run_dir']}/metrics.jsonl"
    )


COMMANDS = {
    "calibrate": cmd_calibrate,
    "evaluate": cmd_evaluate,
    "experiment": cmd_experiment,
    "export": cmd_export,
    "filter": cmd_filter,
    "pipeline": cmd_pipeline,
    "report": cmd_report,
    "demo": cmd_demo,
    "train": cmd_train,
}


# Mistakes in what was asked for: one line on stderr, exit code 2, no traceback.
REFUSALS = (
    CalibrationRefused,
    ConfigError,
    ExportRefused,
    OutputInUse,
    PreflightError,
    ResourceError,
    StorageNotShared,
    UnfinishedFilterOutput,
    UnreadableInputError,
    FileNotFoundError,
    FileExistsError,
)


def root_cause(error: BaseException) -> BaseException:
    """The exception that started it all: Ray wraps a task's error (`RayTaskError.cause`),
    Ray Data chains it (`__cause__`); the user needs the first, not the wrappers."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)
        if not isinstance(inner, BaseException):
            inner = error.__cause__
        if inner is None:
            break
        error = inner
    return error


INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C
# A rerun of these continues where the interrupted one was.
RESUMABLE = ("filter", "train", "experiment")


def interrupted(args: argparse.Namespace, error: BaseException) -> int:
    """Ctrl-C is the user's own stop, not a failure: one line, no traceback (unless verbose),
    exit 130. The output is left as a killed run leaves it, which a rerun resumes."""
    if args.verbose:
        traceback.print_exception(error)
    hint = "; rerun the same command to resume" if args.command in RESUMABLE else ""
    print(f"alpagasus-ray {args.command}: interrupted{hint}", file=sys.stderr)
    return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.verbose and hasattr(args, "overrides"):
        args.overrides.append("ray.verbose=true")
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        return interrupted(args, e)
    except Exception as e:  # noqa: BLE001 - every failure ends in one line (or, verbose, all)
        cause = root_cause(e)
        if isinstance(cause, KeyboardInterrupt):  # Ctrl-C inside something that wrapped it
            return interrupted(args, e)
        if args.verbose:
            traceback.print_exception(e)
        code = 2 if isinstance(cause, REFUSALS) else 1
        if isinstance(cause, FileNotFoundError):
            line = missing_file_line(cause)
        elif code == 2 or isinstance(cause, (OutputTakenError, JudgeAPIStopped, InvariantError)):
            line = str(cause)  # ours: already one line that names the key, file or output
        else:
            line = f"failed: {first_line(cause)}"
            line += "" if args.verbose else " (--verbose for details)"
        print(f"alpagasus-ray {args.command}: {line}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
