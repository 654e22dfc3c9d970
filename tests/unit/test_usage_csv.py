"""The usage report's CSV: formulas neutralised, empty cells left empty."""

from __future__ import annotations

import csv
import io

from haihe.platform.quotas.ledger import REPORT_COLUMNS, report_csv


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_an_empty_project_stays_empty_and_formulas_are_neutralised() -> None:
    base = dict.fromkeys(REPORT_COLUMNS, "")
    rows = [{**base, "month": "2026-12", "org": "acme", "project": "", "user": "alice", "amount": 1.5},
            {**base, "org": "=HYPERLINK(\"http://x\")", "project": "+1", "user": "@me", "source": "-2",
             "resource": "\tx", "amount": -3.0}]
    out = _rows(report_csv(rows))
    assert out[0]["project"] == "" and out[0]["org"] == "acme" and out[0]["amount"] == "1.5"
    assert out[1]["org"].startswith("'=") and out[1]["project"] == "'+1" and out[1]["user"] == "'@me"
    assert out[1]["source"] == "'-2" and out[1]["resource"] == "'\tx"
    assert out[1]["amount"] == "-3.0"  # a number is data, not text: left as it is
