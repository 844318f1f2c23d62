"""Two processes on the CPU (gloo, launched by torchrun; accelerate's Accelerator picks the
process group up) give the same losses as one process with the same global batch."""

import json
import socket
import subprocess
import sys

from nextblock.cli import main
from tests.helpers import save_tiny
from tests.training.test_trainer import write_chat


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    model, data = str(save_tiny(tmp_path / "tiny")), str(write_chat(tmp_path / "chat.jsonl"))
    common = ["adapt", "--model", model, "--data", data, "--seq-len", "32", "--steps", "4",
              "--save-every", "4", "--lr", "0.003", "--warmup", "1"]
    assert main(common + ["--out", str(tmp_path / "one"), "--batch-size", "2"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "nextblock.cli"] + common + ["--out", str(tmp_path / "two"), "--batch-size", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                for d in ("one", "two"))
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["block_size"] == b["block_size"] and a["n_masked"] == b["n_masked"]
        for key in ("loss", "mdm_loss", "ar_loss"):
            assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(a[key])), (key, a, b)
