"""The models' answers: one set of answer columns per model, then one judge request per pair
of answers and order."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.evaluate.columns import GEN_ERROR, GEN_TEXT, GEN_TOKENS, INTERNAL


class FinishAnswers:
    """The model's answer columns; the internal ones go."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, table: pa.Table) -> pa.Table:
        text = [t.strip() if t is not None else None for t in table.column(GEN_TEXT).to_pylist()]
        n = self.name
        cols = {
            f"answer__{n}": pa.array(text, pa.string()),
            f"answer_tokens__{n}": table.column(GEN_TOKENS),
            f"answer_error__{n}": table.column(GEN_ERROR),
        }
        table = table.drop_columns(list(INTERNAL))
        for name, col in cols.items():
            table = table.append_column(name, col)
        return table


class PairRequests:
    """Question rows with every model's answer -> one row per (pair, order)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def __call__(self, table: pa.Table) -> pa.Table:
        out: list[dict[str, Any]] = []
        for r in table.to_pylist():
            for a, b in self.pairs:
                for order, (m1, m2) in (("ab", (a, b)), ("ba", (b, a))):
                    out.append(
                        {
                            **{c: r[c] for c in ("test_set", "question_id", "question")},
                            "model_a": a,
                            "model_b": b,
                            "order": order,
                            "assistant_1": m1,
                            "assistant_2": m2,
                            "answer_1": r[f"answer__{m1}"],
                            "answer_2": r[f"answer__{m2}"],
                        }
                    )
        schema = pa.schema([(c, pa.string()) for c in REQUEST_COLUMNS])
        return pa.Table.from_pylist(out, schema=schema)


REQUEST_COLUMNS = (
    "test_set", "question_id", "question", "model_a", "model_b", "order",
    "assistant_1", "assistant_2", "answer_1", "answer_2",
)  # fmt: skip
