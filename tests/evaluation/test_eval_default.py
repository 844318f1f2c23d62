"""End to end on the real default model: every task in every mode (--limit 3, short
budgets) produces well-formed records and a summary; verified answers equal AR's."""

import json

import pytest

from nextblock.cli import main
from tests.evaluation.test_tasks import DATA

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (DATA / "gsm8k").is_dir(),
                                                   reason="benchmark data not found")]
FILES = {"gsm8k": DATA / "gsm8k" / "test.jsonl", "math500": DATA / "math500" / "test.jsonl",
         "mbpp": DATA / "mbpp" / "mbpp.jsonl", "humaneval": None}
MODES = {"ar": ["--mode", "ar"], "block-B4-t0.9": ["--mode", "block", "--block-size", "4",
                                                   "--threshold", "0.9"],
         "verified-B4-t0.0": ["--mode", "verified", "--block-size", "4", "--threshold", "0"]}


@pytest.mark.parametrize("task", list(FILES))
def test_every_mode_gives_a_report(task, tmp_path, default_lm):
    for flags in MODES.values():
        data = ["--data", str(FILES[task])] if FILES[task] else []
        assert main(["eval", "--task", task, *data, "--limit", "3", "--max-new-tokens", "24",
                     "--out", str(tmp_path), *flags]) == 0
    rows = json.loads((tmp_path / f"{task}-summary.json").read_text())
    assert set(rows) == set(MODES)
    for name, row in rows.items():
        assert row["samples"] == 3 and 0.0 <= row["accuracy"] <= 1.0
        assert row["tokens_per_s"] > 0 and row["forwards_per_sample"] > 0
        recs = [json.loads(x) for x in (tmp_path / f"{task}-{name}.jsonl").read_text()
                .splitlines()]
        assert all(r["tokens"] <= 24 and isinstance(r["correct"], bool) for r in recs)
    assert rows["verified-B4-t0.0"]["agreement_with_ar"] == 1.0  # lossless in float32
    assert "| ar | 3 |" in (tmp_path / f"{task}-summary.md").read_text()
