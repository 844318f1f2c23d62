"""Several processes on the CPU (gloo), launched by `accelerate launch` with the shipped
configs in scripts/accelerate/: DDP and FSDP2 give the same losses and gradient norms as
one process with the same global batch (LoRA and full fine-tuning), and a run resumes
exactly on another process count (FSDP checkpoints are written from the gathered state)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nextblock.cli import main
from tests.helpers import save_tiny
from tests.training.test_trainer import write_chat

CONFIGS = Path(__file__).resolve().parents[2] / "scripts" / "accelerate"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    return str(save_tiny(d / "tiny")), str(write_chat(d / "chat.jsonl"))


def common(files, *extra):
    model, data = files
    return ["adapt", "--model", model, "--data", data, "--seq-len", "32", "--steps", "4",
            "--save-every", "2", "--lr", "0.003", "--warmup", "1", *extra]


def launch(config: str, args: list[str], processes: int = 2):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / config), "--num_processes", str(processes), "--main_process_ip",
           "127.0.0.1", "--main_process_port", str(free_port()), "-m", "nextblock.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def written_by(run, step):
    state = Path(run) / "checkpoints" / f"step-{step:07d}" / "state.json"
    s = json.loads(state.read_text())
    return s["processes"], s["parallelism"]


def assert_same_run(one, other):
    assert [r["step"] for r in one] == [r["step"] for r in other] == [1, 2, 3, 4]
    for a, b in zip(one, other):
        assert a["block_size"] == b["block_size"] and a["n_masked"] == b["n_masked"]
        for key in ("loss", "mdm_loss", "ar_loss", "grad_norm"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), (key, a, b)


def test_ddp_two_processes_with_accumulation_match_one(files, tmp_path):
    assert main(common(files, "--out", str(tmp_path / "one"), "--batch-size", "4")) == 0
    proc = launch("ddp.yaml", common(files, "--out", str(tmp_path / "two"), "--batch-size",
                                     "1", "--grad-accum", "2"))
    assert_same_run(metrics(tmp_path / "one"), metrics(tmp_path / "two"))
    assert proc.stderr.count("done: step 4") == 1  # the summary once, not once per process
    assert written_by(tmp_path / "two", 4) == (2, "ddp")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp_matches_one_process_and_resumes_on_another_count(files, tmp_path, lora):
    extra = ["--lora-r", "4", "--lora-alpha", "8"] if lora else []
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    assert main(common(files, *extra, "--out", ref, "--batch-size", "2")) == 0
    if lora:  # one process first, then FSDP continues its checkpoint
        assert main(common(files, *extra, "--out", run, "--batch-size", "2",
                           "--stop-at", "2")) == 0
        launch("fsdp.yaml", common(files, *extra, "--out", run, "--batch-size", "1",
                                   "--resume"))
        assert written_by(run, 4) == (2, "fsdp2")  # sharded, not DDP in disguise
    else:  # FSDP first, then one process continues the gathered checkpoint
        launch("fsdp.yaml", common(files, *extra, "--out", run, "--batch-size", "1",
                                   "--stop-at", "2"))
        assert written_by(run, 2) == (2, "fsdp2")
        assert main(common(files, *extra, "--out", run, "--batch-size", "2", "--resume")) == 0
    assert_same_run(metrics(ref), metrics(run))
    # the final checkpoint holds full tensors, whoever wrote it: export reads it
    final = [load_file(Path(d) / "checkpoints" / "step-0000004" / "trainable.safetensors")
             for d in (ref, run)]
    assert final[0].keys() == final[1].keys()
    for k in final[0]:
        assert final[0][k].shape == final[1][k].shape
        assert (final[0][k] - final[1][k]).abs().max() < 1e-4, k
    args = ["export", "--model", run, "--out", str(tmp_path / "exported")]
    assert main(args + (["--adapter"] if lora else [])) == 0
