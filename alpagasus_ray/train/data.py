"""Supervised fine-tuning data: read a filter output's kept rows (or its kept and rejected
ones, or canonical rows), turn Alpaca prompt + response into token ids with the loss on the
response only, and collate batches padded only to their own longest row.

Reading, validation and tokenisation run as Ray Data stages before the shards reach the
Ray Train workers, so the driver never holds the rows and the workers see ready token ids.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.collate_fn import NumpyBatchCollateFn

from alpagasus_ray.data.io import (
    DATA_DIR,
    MANIFEST,
    RUN_MARKER,
    UnfinishedFilterOutput,
    filesystem,
    join,
)
from alpagasus_ray.data.listing import Listing
from alpagasus_ray.data.schema import DECISION, INPUT, INSTRUCTION, OUTPUT, REASON, Decision
from alpagasus_ray.text.prompts import alpaca_prompt
from alpagasus_ray.train.chat import (
    IGNORE_INDEX,
    NO_RESPONSE_TOKENS,
    check_chat_tokenizer,
    conversation_turns,
    encode_conversation,
)
from alpagasus_ray.train.config import TrainConfig, TrainData

INPUT_IDS, LABELS, ATTENTION_MASK = "input_ids", "labels", "attention_mask"
POSITION_IDS = "position_ids"
ROWS = "rows"  # a packed batch's row count, for the metrics (not a model input)
SKIP = "skip"  # why a row cannot be trained on; null for trainable rows


def encode_example(
    tokenizer: Any, instruction: str, input: str | None, output: str, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one example, truncated to `max_length` tokens.

    The prompt is tokenized on its own so that its length, and so the mask, is exact (as in
    Stanford Alpaca's train.py); the response ends with EOS so the model learns to stop.
    Both lists are empty when truncation leaves no response token: such a row teaches
    nothing and is skipped by the caller.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = bos + tokenizer.encode(alpaca_prompt(instruction, input), add_special_tokens=False)
    response = tokenizer.encode(output, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return [], []
    return ids, labels


class EncodeStage:
    """Ray Data stage: validated rows -> (input_ids, labels, skip).

    Alpaca rows get the paper's prompt; with `messages` (the column holding each row's
    conversation) a row gets the model's chat template and the loss on its assistant turns
    (train/chat.py). A row validation quarantined, or one with no target left after
    truncation, gets empty ids and a `skip` reason instead of failing the job; the driver
    counts them.
    """

    def __init__(
        self,
        tokenizer_name: str,
        max_length: int,
        trust_remote_code: bool = False,
        decisions: tuple[str, ...] = (Decision.KEPT.value,),
        messages: str | None = None,
    ):
        from alpagasus_ray.text.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_name, trust_remote_code, padding_side="right")
        if messages:
            check_chat_tokenizer(self.tokenizer, tokenizer_name)
        self.max_length = max_length
        self.decisions = (None, *decisions)  # None: rows that are not a filter's output
        self.messages = messages

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.select(self._read(table)).to_pylist()
        ids, labels, skip = [], [], []
        for row in rows:
            a: list[int] = []
            b: list[int] = []
            if row.get(DECISION) not in self.decisions:
                why = row.get(REASON) or str(row[DECISION])
            else:
                a, b, why = self._encode(row)
            ids.append(a)
            labels.append(b)
            skip.append(why)
        return pa.table(
            {
                INPUT_IDS: pa.array(ids, type=pa.list_(pa.int32())),
                LABELS: pa.array(labels, type=pa.list_(pa.int32())),
                SKIP: pa.array(skip, type=pa.string()),
            }
        )

    def _read(self, table: pa.Table) -> list[str]:
        wanted = [self.messages] if self.messages else [INSTRUCTION, INPUT, OUTPUT]
        return [c for c in (*wanted, DECISION, REASON) if c in table.column_names]

    def _encode(self, row: dict[str, Any]) -> tuple[list[int], list[int], str | None]:
        if self.messages:
            turns, why = conversation_turns(row.get(self.messages))
            if why:
                return [], [], why
            return encode_conversation(self.tokenizer, turns, self.max_length)
        a, b = encode_example(
            self.tokenizer, row[INSTRUCTION], row[INPUT], row[OUTPUT], self.max_length
        )
        return a, b, None if a else NO_RESPONSE_TOKENS


def tally_skips(table: pa.Table) -> pa.Table:
    """One row per skip reason (`""` for trainable rows) with its count, for the driver."""
    counts = Counter(r or "" for r in table.column(SKIP).to_pylist())
    return pa.table({SKIP: list(counts), "n": list(counts.values())})


def trainable_only(table: pa.Table) -> pa.Table:
    """Drop skipped rows and the `skip` column: what the workers iterate over."""
    keep = pc.is_null(table.column(SKIP))
    return table.filter(keep).select([INPUT_IDS, LABELS])


class PadCollate(NumpyBatchCollateFn):
    """Right-pads a batch to its own longest row (input_ids with pad, labels with -100),
    not to max_length: on instruction data most rows are far shorter than the limit."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        rows = [np.asarray(r, dtype=np.int64) for r in batch[INPUT_IDS]]
        labels = [np.asarray(r, dtype=np.int64) for r in batch[LABELS]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, y) in enumerate(zip(rows, labels, strict=True)):
            ids[i, : len(r)] = torch.from_numpy(r)
            lab[i, : len(y)] = torch.from_numpy(y)
            mask[i, : len(r)] = 1
        return {INPUT_IDS: ids, ATTENTION_MASK: mask, LABELS: lab}


class PackCollate(NumpyBatchCollateFn):
    """A batch's rows as one sequence with no padding (what transformers'
    `DataCollatorWithFlattening` builds): position ids restart at each row, which the model
    turns into a block-diagonal causal mask (no attention mask given), so each row attends
    only to itself; each row's first label is ignored, so no row is trained to predict the
    next one's start. The loss is over the same label tokens as the padded batch's."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        rows = [np.asarray(r, dtype=np.int64) for r in batch[INPUT_IDS]]
        labels = [np.asarray(r, dtype=np.int64).copy() for r in batch[LABELS]]
        for y in labels:
            y[0] = IGNORE_INDEX
        positions = [np.arange(len(r), dtype=np.int64) for r in rows]
        return {
            INPUT_IDS: torch.from_numpy(np.concatenate(rows))[None],
            LABELS: torch.from_numpy(np.concatenate(labels))[None],
            POSITION_IDS: torch.from_numpy(np.concatenate(positions))[None],
            ROWS: torch.tensor(len(rows)),
        }


def kept_input(cfg: TrainConfig) -> tuple[TrainData, Listing | None]:
    """(data, listing): a finished filter output trains on the kept files its committed
    manifest lists (the listing `read_input` takes), never on a folder listing; an
    unfinished one (a `data/` folder or run marker without a complete manifest) is refused.
    Any other input is read as it is (listing None)."""
    from alpagasus_ray.data.formats import FileFormat
    from alpagasus_ray.engines.hash import STAND_IN_NOTE
    from alpagasus_ray.filter.manifest import committed, listed_files

    fs, root = filesystem(cfg.data.uri, cfg.storage)
    if fs.exists(join(root, MANIFEST)):
        manifest = committed(fs, root, f"data.uri {cfg.data.uri}")
        if manifest.judged_by_stand_in and not cfg.data.allow_stand_in_judge:
            raise ValueError(
                f"data.uri {cfg.data.uri}: {STAND_IN_NOTE}; refusing to train on what it kept "
                "(judge it with a real engine, or set data.allow_stand_in_judge=true)"
            )
        files = listed_files(root, manifest, tuple(cfg.data.decisions))
        if not files:
            which = " or ".join(cfg.data.decisions)
            raise FileNotFoundError(f"data.uri {cfg.data.uri}: the filter has no {which} rows")
        listing = Listing(fs, files, dict.fromkeys(files, FileFormat("parquet")), [])
        return cfg.data.model_copy(update={"format": "parquet"}), listing
    if fs.exists(join(root, DATA_DIR)) or fs.exists(join(root, RUN_MARKER)):
        raise UnfinishedFilterOutput(
            f"data.uri {cfg.data.uri} is a filter output without manifest.json: its run did "
            f"not finish (rerun the filter to complete it); refusing to train on partial data"
        )
    check_rows_as_they_are(cfg)
    return cfg.data, None


def trained_on(cfg: TrainConfig) -> dict[str, Any] | None:
    """Which committed state of a filter output a run trains on (None for other data): its
    partitions, their rows, the settings that decided them and a digest of what its manifest
    lists for them, so a model can be told apart from one trained before the output was
    re-decided."""
    from alpagasus_ray.filter.manifest import committed
    from alpagasus_ray.filter.resume import DECISION_KEYS

    fs, root = filesystem(cfg.data.uri, cfg.storage)
    if not fs.exists(join(root, MANIFEST)):
        return None
    manifest = committed(fs, root, f"data.uri {cfg.data.uri}")
    entries = sorted(
        (e.path, e.decision, e.rows) for e in manifest.files if e.decision in cfg.data.decisions
    )
    decided = {k: manifest.fingerprint[k] for k in DECISION_KEYS if k in manifest.fingerprint}
    digest = hashlib.sha256(json.dumps([entries, manifest.started_at]).encode()).hexdigest()
    return {
        "uri": cfg.data.uri,
        "decisions": list(cfg.data.decisions),
        "rows": sum(rows for _, _, rows in entries),
        "decided": decided,
        "digest": digest[:16],
    }


def conversation_column(cfg: TrainConfig) -> str | None:
    """The column holding each row's conversation, or None for Alpaca rows: for a filter
    output, its input's conversation column as the output carries it (JSON text); for other
    data, `data.columns.messages`."""
    from alpagasus_ray.filter.carried import carried_name
    from alpagasus_ray.filter.manifest import committed

    fs, root = filesystem(cfg.data.uri, cfg.storage)
    if fs.exists(join(root, MANIFEST)):
        name = committed(fs, root, f"data.uri {cfg.data.uri}").conversation_column
    else:
        name = cfg.data.columns.messages
    return carried_name(name) if name else None


def check_conversations(cfg: TrainConfig) -> str | None:
    """Before Ray: conversation rows need a tokenizer with a chat template (one line if
    not); returns the conversation column."""
    from alpagasus_ray.text.models import load_tokenizer

    column = conversation_column(cfg)
    if column:
        name = cfg.model.tokenizer or cfg.model.name
        check_chat_tokenizer(load_tokenizer(name, cfg.model.trust_remote_code), name)
    return column


def check_rows_as_they_are(cfg: TrainConfig) -> None:
    """Data that is not a filter output is trained on as it is, so it must hold the mapped
    columns: a folder of someone else's files is refused here, in seconds and before Ray,
    as the filter's preflight refuses it, not once Ray has counted 0 trainable rows."""
    from alpagasus_ray.data.listing import list_input_files
    from alpagasus_ray.filter.preflight import PreflightError, check_mapping, first_file_columns

    try:
        fs, files, formats, _ = list_input_files(cfg.data, cfg.storage)
        columns = first_file_columns(fs, files[0], formats[files[0]])
        check_mapping(cfg.data.columns, columns, files[0])
    except (FileNotFoundError, ValueError) as e:  # a PreflightError is a ValueError
        cause = str(e).split(": ", 1)[1] if isinstance(e, PreflightError) else str(e)
        raise PreflightError(
            "training data",
            "data.uri",
            f"{cfg.data.uri} is not a filter output (no manifest.json), and its rows cannot "
            f"be trained on as they are: {cause}",
        ) from None


def training_dataset(cfg: TrainConfig, messages: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(dataset of input_ids/labels, counts). Rows live in Ray; only counts reach the driver.

    Unusable rows (missing or non-string fields, broken JSON, nothing left to learn after
    truncation) are skipped and counted by reason rather than failing the job. The count of
    trainable rows fixes the schedule's length before training starts.
    """
    import ray.data

    from alpagasus_ray.data.read import read_input
    from alpagasus_ray.filter.stages import ValidateStage

    (data, listing), light = kept_input(cfg), cfg.ray.task_cpus
    ds = read_input(data, cfg.storage, light, listing=listing)
    # The rows keep the files' order, so the tokenized cache (and each worker's fixed
    # shard of it) is the same in every run: what a resume mid-epoch relies on.
    ds.context.execution_options.preserve_order = data.cache_tokenized
    ds = ds.map_batches(ValidateStage(data.columns), batch_format="pyarrow", num_cpus=light)
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_args=(
            cfg.model.tokenizer or cfg.model.name,
            cfg.train.max_length,
            cfg.model.trust_remote_code,
            tuple(cfg.data.decisions),
            messages,
        ),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),  # the tokenizer loads once
        num_cpus=light,
    )
    if data.cache_tokenized:
        ds = ds.materialize()
    skipped: dict[str, int] = {}
    for row in ds.map_batches(tally_skips, batch_format="pyarrow", num_cpus=light).iter_rows():
        skipped[row[SKIP]] = skipped.get(row[SKIP], 0) + int(row["n"])
    examples = skipped.pop("", 0)
    train = ds.map_batches(trainable_only, batch_format="pyarrow", num_cpus=light)
    if data.cache_tokenized:
        # Also cached: a lazy step left here would need CPUs the workers already hold.
        train = train.materialize()
    counts = {
        "template": "chat" if messages else "alpaca",
        "rows_read": examples + sum(skipped.values()),
        "examples": examples,
        "skipped_rows": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
    }
    return train, counts
