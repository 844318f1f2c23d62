"""The decode benchmark counts generated tokens only, compares every row with AR in the
same run, and writes the table, JSON rows and the frontier plot."""

import json

import pytest

import nextblock
from nextblock import bench as B
from nextblock.cli import main
from tests.helpers import save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("bench") / "tiny")


def test_rows_are_interleaved_prompt_by_prompt():
    """Every prompt runs under every row before the next prompt starts (the order rotated),
    so a drifting machine speed reaches all rows alike; each row keeps its own outputs."""
    calls = []

    def runner(i):
        return lambda ids: (calls.append((i, ids[0])), [ids[0], i], 1, 0)[1:]
    rows = [B.Row("ar", {}), B.Row("block", {}), B.Row("verified", {})]
    B.measure_repeat(rows, [runner(i) for i in range(3)], [[10], [11], [12], [13]])
    assert [c[1] for c in calls] == [10] * 3 + [11] * 3 + [12] * 3 + [13] * 3
    assert [c[0] for c in calls[:6]] == [0, 1, 2, 1, 2, 0]  # rotated from prompt to prompt
    for i, r in enumerate(rows):
        assert r.outputs == [[p, i] for p in (10, 11, 12, 13)]
        assert r.tokens == 8 and r.forwards == 4 and len(r.seconds) == 1


def test_bench_counts_generated_tokens_only(tiny):
    lm = nextblock.load(tiny)
    long_prompt = " ".join(f"w{i % 80}" for i in range(150))  # 150 prompt tokens
    prompts = [long_prompt, "w1 w2 w3"]
    rows = B.grid(lm, B.MODES, block_sizes=[4], thresholds=[0.5], sub_blocks=[None],
                  verified=[(4, 0.0)])
    assert [r.mode for r in rows] == ["transformers", "ar", "block", "verified"]
    B.bench(lm, prompts, rows, max_new_tokens=6, repeats=2, chat=False)
    for r in rows:
        assert len(r.outputs) == 2 and all(1 <= len(o) <= 6 for o in r.outputs)
        assert r.tokens == sum(len(o) for o in r.outputs) <= 12  # never the 150 prompt ones
        assert r.tokens_per_s > 0 and len(r.seconds) == 2
    hf, ar, block, ver = rows
    assert hf.outputs == ar.outputs  # greedy AR equals transformers generate
    assert ar.exact_match_vs_ar == 1.0 and ar.speedup_vs_ar == 1.0
    assert ver.exact_match_vs_ar == 1.0 and ver.token_match_vs_ar == 1.0  # lossless
    assert ar.forwards == ar.tokens  # one forward per generated token (prefill included)
    same = sum(x == y for a, b in zip(block.outputs, ar.outputs) for x, y in zip(a, b))
    assert block.token_match_vs_ar == same / sum(len(a) for a in ar.outputs)


def test_bench_cli_writes_json_and_plot(tiny, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w5 w6 w7\nw8 w9\n")
    out, png = tmp_path / "rows.json", tmp_path / "frontier.png"
    rc = main(["bench", "--model", str(tiny), "--prompts", str(prompts), "--no-chat",
               "--max-new-tokens", "5", "--repeats", "1", "--modes", "ar,block,verified",
               "--block-sizes", "4", "--thresholds", "0.9", "--sub-blocks", "2,full",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["ar", "block", "block"] + ["verified"] * 4
    for r in rows:
        assert {"mode", "settings", "tokens_per_s", "forwards", "tokens_per_forward",
                "speedup_vs_ar", "speedup_vs_transformers", "exact_match_vs_ar",
                "token_match_vs_ar", "peak_mem_mb"} <= set(r)
        assert r["speedup_vs_transformers"] is None  # no transformers row asked for
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "tok/fwd" in capsys.readouterr().out


def test_bench_bad_input(tiny, tmp_path):
    lm = nextblock.load(tiny)
    with pytest.raises(nextblock.InputError, match="unknown mode"):
        B.grid(lm, ["ar", "fast"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(nextblock.InputError, match="no prompts"):
        B.load_prompts(empty)
    with pytest.raises(nextblock.InputError, match="cannot read"):
        B.load_prompts(tmp_path / "missing.txt")
    assert len(B.load_prompts()) >= 24  # the shipped set
