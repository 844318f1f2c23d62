"""The code sandbox: right code passes, wrong code fails, and hostile or runaway samples
(endless loop, unbounded memory, writing outside its directory, fork loop) are contained,
scored as failed, and leave the evaluator running."""

import time
from pathlib import Path

from nextblock.evaluation.sandbox import run_program


def test_passing_and_failing_programs():
    ok = run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n")
    assert ok.passed and ok.reason == "passed"
    bad = run_program("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n")
    assert not bad.passed and "AssertionError" in bad.reason


def test_endless_loop_is_killed():
    t = time.time()
    v = run_program("while True:\n    pass\n", timeout=2)
    assert not v.passed and v.reason == "timeout" and time.time() - t < 10


def test_unbounded_memory_is_contained():
    v = run_program("x = []\nwhile True:\n    x.append(' ' * 10**7)\n", timeout=20,
                    memory_mb=256)
    assert not v.passed and ("MemoryError" in v.reason or v.reason == "timeout"
                             or "exit status" in v.reason)


def test_writing_outside_the_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    v = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert not v.passed and "PermissionError" in v.reason
    assert not target.exists()
    inside = run_program("open('ok.txt', 'w').write('x')\nassert open('ok.txt').read() == 'x'\n")
    assert inside.passed


def sandboxed_processes() -> list[int]:
    """Live processes running a sandboxed program (their command line names its file)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"nextblock-sandbox-" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_fork_loop_is_contained():
    v = run_program("import os\nwhile True:\n    os.fork()\n", timeout=3)
    assert not v.passed
    v = run_program("import subprocess\nsubprocess.run(['true'])\n", timeout=3)
    assert not v.passed and "PermissionError" in v.reason
    assert run_program("assert 1 + 1 == 2\n").passed  # the evaluator still works
    assert sandboxed_processes() == []  # the fork loop left nothing running
