"""The CLI on a tiny saved model: JSON output, batches, errors as one line, trace page."""

import json

import pytest

from nextblock.cli import main
from tests.helpers import save_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("cli") / "tiny"))


def test_generate_json_for_a_batch(model_dir, capsys):
    rc = main(["generate", "w1 w2", "w3 w4 w5 w6", "--model", model_dir, "--json", "--no-chat",
               "--mode", "block", "--block-size", "4", "--max-new-tokens", "10"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert [r["prompt_tokens"] for r in rows] == [2, 4]
    for r in rows:
        assert r["new_tokens"] == len(r["tokens"]) <= 10
        assert r["mode"] == "block" and r["settings"]["block_size"] == 4
        assert r["mask_token_id"] == 92 and r["forwards"] >= 3


def test_generate_streams_plain_text(model_dir, capsys):
    rc = main(["generate", "w1 w2", "--model", model_dir, "--no-chat", "--mode", "ar",
               "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert rc == 0 and len(captured.out.split()) >= 1
    n = len(captured.out.split())  # AR: one forward per new token, the prefill's included
    assert f"[ar] {n} tokens, {n} forwards, 1.00 tokens/forward" in captured.err


@pytest.mark.parametrize("argv,message", [
    (["--block-size", "0"], "invalid block_size=0"),
    (["--temperature", "-1"], "invalid temperature=-1.0"),
    (["--top-p", "1.5"], "invalid top_p=1.5"),
    (["--block-size", "8", "--sub-block", "3"], "invalid sub_block=3: must divide"),
    (["--model", "/no/such/dir"], "model not found"),
])
def test_errors_are_one_clear_line(model_dir, capsys, argv, message):
    args = ["generate", "w1", "--no-chat"] + (argv if "--model" in argv
                                              else ["--model", model_dir] + argv)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_empty_prompt_is_an_error(model_dir, capsys):
    assert main(["generate", " ", "--model", model_dir]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_show_steps_prints_one_line_per_forward(tmp_path, capsys):
    """One definition of a forward: the step lines, the summary and the JSON record count
    the same ones; a fused denoise step shares its commit's line ("commit+denoise")."""
    peaked = str(save_tiny(tmp_path / "peaked", scale=40.0))  # confident: commits fuse
    args = ["generate", "w10 w11", "--model", peaked, "--no-chat", "--mode", "block",
            "--block-size", "4", "--threshold", "0.9", "--max-new-tokens", "24",
            "--show-steps"]
    assert main(args + ["--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    record = json.loads(lines[-1])
    steps = [ln for ln in lines[:-1] if ln.strip()]
    assert len(steps) == record["forwards"] >= 2  # one line per forward pass
    assert "prefill" in steps[0] and "denoise" in steps[1]
    fused = [ln for ln in steps if "commit+denoise" in ln]
    assert len(fused) == record["fused_forwards_saved"] > 0
    assert main(args) == 0
    out, err = capsys.readouterr()
    shown = [ln for ln in out.splitlines() if " prefill " in ln or " denoise " in ln
             or " commit" in ln]
    assert f"{len(shown)} forwards" in err and f"{record['forwards']} forwards" in err


def test_trace_writes_a_replay_page(model_dir, tmp_path, capsys):
    out = tmp_path / "steps.html"
    rc = main(["trace", "w1 w2", "--model", model_dir, "--no-chat", "--block-size", "4",
               "--mode", "block", "--max-new-tokens", "8", "--out", str(out)])
    assert rc == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "nb-data" in page


def test_chat_keeps_the_history(model_dir, capsys, monkeypatch):
    import io

    import nextblock

    seen = []
    real = nextblock.NextBlockModel.stream

    def spy(self, prompt, **kw):
        seen.append([m["content"] for m in prompt])
        return real(self, prompt, **kw)

    monkeypatch.setattr(nextblock.NextBlockModel, "stream", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("w1 w2\nw3\n/reset\nw4\n/exit\n"))
    assert main(["chat", "--model", model_dir, "--mode", "ar", "--max-new-tokens", "4"]) == 0
    assert [len(s) for s in seen] == [1, 3, 1]  # user; user, assistant, user; reset -> user
    assert seen[1][0] == "w1 w2" and seen[1][2] == "w3" and seen[2] == ["w4"]


@pytest.mark.parametrize("argv,flag", [
    (["eval", "--task", "gsm8k", "--limit", "0"], "--limit"),
    (["eval", "--task", "gsm8k", "--limit", "-1"], "--limit"),
    (["bench", "--limit", "0"], "--limit"),
    (["bench", "--thresholds", "abc"], "--thresholds"),
    (["bench", "--block-sizes", "4,x"], "--block-sizes"),
    (["bench", "--sub-blocks", "0"], "--sub-blocks"),
])
def test_bad_flag_values_exit_2_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}:" in err.splitlines()[-1]
    assert "Traceback" not in err


def test_wrong_config_type_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": ["x.jsonl"], "lr": "1e-4"}))
    assert main(["adapt", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lr='1e-4'" in err


def test_version_and_help_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    from nextblock import __version__
    assert capsys.readouterr().out.strip() == f"nextblock {__version__}"
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-new-tokens MAX_NEW_TOKENS (default: 128)" in out
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lora-r LORA_R LoRA rank; 0 = full fine-tuning" in out


def test_progress_lines_when_not_a_terminal(capsys):
    from nextblock.cli import progress_reporter
    with progress_reporter("gsm8k ar", 40, lines=4) as tick:
        for _ in range(40):
            tick()
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [f"gsm8k ar: {n}/40" for n in (10, 20, 30, 40)]


def test_every_adapt_setting_is_a_flag_that_reaches_the_config(monkeypatch, tmp_path):
    import dataclasses

    from nextblock.cli import build_parser
    from nextblock.training import trainer
    from nextblock.training.adapt_config import AdaptConfig

    adapt = build_parser()._subparsers._group_actions[0].choices["adapt"]
    assert {f.name for f in dataclasses.fields(AdaptConfig)} <= {a.dest for a in adapt._actions}
    seen = {}
    monkeypatch.setattr(trainer, "adapt", lambda cfg, **kw: seen.setdefault("cfg", cfg) and [])
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    assert main(["adapt", "--data", str(data), "--keep", "3", "--weight-decay", "0.1",
                 "--training-mask", "block_causal", "--complementary"]) == 0
    cfg = seen["cfg"]
    assert (cfg.keep, cfg.weight_decay, cfg.training_mask, cfg.complementary) == (
        3, 0.1, "block_causal", True)
    assert cfg.lr == AdaptConfig.lr and cfg.data == [str(data)]
    with pytest.raises(SystemExit) as refused:  # its choices, from the same definition
        main(["adapt", "--data", str(data), "--schedule", "linear"])
    assert refused.value.code == 2
