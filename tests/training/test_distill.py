"""The self-distillation data: never a test split, no held-out prompt, resumable without
duplicates (scripts/distill.py on a tiny model; GSM8K / MBPP files written here)."""

import builtins
import importlib.util
import json
from pathlib import Path

import pytest

from nextblock.errors import ConfigError
from nextblock.training import distill as d
from tests.helpers import save_tiny

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "distill.py"


def _script():
    spec = importlib.util.spec_from_file_location("distill_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "gsm8k").mkdir()
    for split in ("train", "test"):
        with open(root / "gsm8k" / f"{split}.jsonl", "w") as f:
            for i in range(6):
                f.write(json.dumps({"question": f"{split} question {i} ?", "answer": "#### 1"})
                        + "\n")
    with open(root / "mbpp.jsonl", "w") as f:  # ids 11-510 are MBPP's test split
        for tid in (5, 11, 300, 510, 601, 700, 974):
            f.write(json.dumps({"task_id": tid, "text": f"task {tid}"}) + "\n")
    model = save_tiny(root / "tiny", max_position_embeddings=128)
    return root, model


def _run(data, out, *sources, extra=()):
    root, model = data
    argv = ["--out", str(out), "--model", str(model), "--max-new-tokens", "6", "--batch", "3",
            "--gsm8k", str(root / "gsm8k" / "train.jsonl"), "--mbpp", str(root / "mbpp.jsonl"),
            *[x for s in sources for x in ("--source", s)], *extra]
    _script().main(argv)
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_never_reads_a_test_split(data, tmp_path, monkeypatch):
    opened = []
    real_open, real_read = builtins.open, Path.read_text

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_read(self, *a, **k):
        opened.append(str(self))
        return real_read(self, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(Path, "read_text", spy_read)
    recs = _run(data, tmp_path / "out.jsonl", "gsm8k:6", "mbpp:10", "templated:2")
    monkeypatch.undo()
    assert not [p for p in opened if "test" in Path(p).name]
    prompts = [r["messages"][0]["content"] for r in recs]
    assert sorted(p for p in prompts if p.startswith("task")) == ["task 601", "task 700",
                                                                   "task 974"]
    assert sum(p.startswith("train question") for p in prompts) == 6
    with pytest.raises(SystemExit, match="test split"):
        _run(data, tmp_path / "bad.jsonl", "gsm8k:2",
             extra=["--gsm8k", str(data[0] / "gsm8k" / "test.jsonl")])


def test_resumes_without_duplicates(data, tmp_path):
    out = tmp_path / "out.jsonl"
    first = _run(data, out, "templated:3")
    with open(out, "a") as f:  # a kill in the middle of a write
        f.write('{"messages": [{"role": "us')
    again = _run(data, out, "templated:7")  # the same seeded order: 3 done, 4 to do
    keys = [d.key(r["messages"][:-1]) for r in again]
    assert len(again) == 7 and len(set(keys)) == 7
    assert again[:3] == first  # kept as written, the cut line gone
    assert len(_run(data, out, "templated:7")) == 7  # nothing left to do


def test_held_out_and_benchmark_prompts_are_never_selected():
    excluded = d.excluded_keys()
    assert len(excluded) >= 121
    held = d.user("How do I boil an egg?", "x", "howto")  # a held-out prompt
    pool = [held, d.user("How do I boil  an EGG?", "x", "howto"),
            d.user("How do I bake bread?", "x", "howto")]
    chosen = d.select(pool, 3, seed=0, excluded=excluded)
    assert [p.messages[0]["content"] for p in chosen] == ["How do I bake bread?"]
    for source in (d.templated(), d.docs()):
        assert not {p.key for p in source} & excluded
    with pytest.raises(ConfigError, match="test split"):
        d.gsm8k("somewhere/test.jsonl")
