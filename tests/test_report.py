"""The report's counts, from a hand-made output table (decisions as the hive partition
column reads them back: dictionary-encoded)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from alpagasus_ray.filter.report import compute_report


def test_counts_per_decision_reason_category_and_flag():
    decision = pa.array(["kept", "rejected", "kept", "quarantined", "failed", "kept"])
    table = pa.table(
        {
            "decision": decision.dictionary_encode(),
            "score": [4.8, 2.0, 4.6, None, None, 5.0],
            "reason": [None, None, None, "null_field", "engine_error", None],
            "category": ["math", "math", None, "math", "geo", "geo"],
            "suspicious": [True, None, False, True, False, True],
        }
    )
    report = compute_report(table, 4.5, "category")
    assert report["rows"] == 6 and report["scored"] == 4
    assert report["counts"] == {"kept": 3, "rejected": 1, "quarantined": 1, "failed": 1}
    assert report["kept_fraction"] == 0.5
    assert report["score_mean"] == pytest.approx((4.8 + 2.0 + 4.6 + 5.0) / 4)
    assert report["reasons"] == {"null_field": 1, "engine_error": 1}
    assert report["suspicious"] == {"rows": 3, "kept": 2, "rejected": 0, "quarantined": 1,
                                    "failed": 0}  # fmt: skip
    assert report["per_category"] == {
        "geo": {"kept": 1, "rejected": 0, "quarantined": 0, "failed": 1},
        "math": {"kept": 1, "rejected": 1, "quarantined": 1, "failed": 0},
        "None": {"kept": 1, "rejected": 0, "quarantined": 0, "failed": 0},
    }
