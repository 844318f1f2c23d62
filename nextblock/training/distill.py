"""Self-distillation prompts and the resumable answer file (adaptation data, issue 16).

Block and verified decoding should write what the model's own AR mode writes, so the
training targets are the base model's AR answers to many kinds of prompts. This module
builds the prompts, all offline and from training material only:

- `gsm8k`:  GSM8K *train* questions;            `mbpp`: MBPP *train* tasks (ids 601-974);
- `templated`: explanations, lists, how-to, rewriting, translation and code requests from
  the topic and template lists in `nextblock/assets/distill_prompts.json`;
- `docs`: passages and functions of the Python documentation installed with Python
  (`pydoc_data.topics`, stdlib docstrings): the same on every machine with Python 3.11;
- `self_instruct`: meta-prompts ("write one question about volcanoes") whose answers, from
  the model itself, become new prompts (`requests_from`);
- `multiturn`: an answered conversation plus a follow-up question (`follow_ups`).

Prompts are deduplicated by their normalised text, and every prompt of the held-out
evaluation set and of the benchmark (`nextblock/assets/*.jsonl`) is excluded. A path whose
name says "test" is refused. `AnswerFile` appends answers and knows, on restart, which
prompts are done (kept or dropped), so a stopped run resumes without duplicates.

    python scripts/distill.py --out runs/distill/general.jsonl --source templated:2000
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

DOC_MODULES = ("math", "os.path", "json", "random", "itertools", "collections", "datetime",
               "statistics", "string", "textwrap", "functools")
MBPP_TRAIN = range(601, 975)  # MBPP's train split; 1-10 prompt, 11-510 test, 511-600 val


@dataclass
class Prompt:
    messages: list[dict]  # the conversation so far, ending with a user turn
    source: str
    kind: str
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return key(self.messages)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def key(messages: list[dict]) -> str:
    return json.dumps([normalise(m["content"]) for m in messages])


def user(text: str, source: str, kind: str) -> Prompt:
    return Prompt([{"role": "user", "content": text}], source, kind)


def refuse_test_split(path: str | Path) -> Path:
    p = Path(path)
    if "test" in p.name.lower():
        raise ConfigError(f"{p}: refusing to distill from a test split")
    return p


def _asset(name: str) -> str:
    return resources.files("nextblock").joinpath(f"assets/{name}").read_text()


def excluded_keys() -> set[str]:
    """Held-out evaluation and benchmark prompts: never training prompts (any turn)."""
    keys = set()
    for name in ("heldout_general.jsonl", "bench_prompts.jsonl"):
        for line in _asset(name).splitlines():
            rec = json.loads(line)
            for text in rec.get("turns", [rec.get("prompt", "")]):
                keys.add(key([{"role": "user", "content": text}]))
    return keys


def gsm8k(path: str | Path) -> list[Prompt]:
    p = refuse_test_split(path)
    return [user(json.loads(line)["question"], "gsm8k", "math") for line in open(p)]


def mbpp(path: str | Path) -> list[Prompt]:
    p = refuse_test_split(path)
    recs = [json.loads(line) for line in open(p)]
    return [user(r["text"], "mbpp", "code") for r in recs if r["task_id"] in MBPP_TRAIN]


def templated() -> list[Prompt]:
    spec = json.loads(_asset("distill_prompts.json"))
    fill = {"explain": ("t", spec["topics"]), "list": ("t", spec["topics"]),
            "howto": ("h", spec["howto"]), "rewrite": ("s", spec["sentences"]),
            "translate": ("s", spec["sentences"]), "code": ("c", spec["code"])}
    out = []
    for kind, (slot, values) in fill.items():
        for tpl in spec["templates"][kind]:
            out += [user(tpl.format(**{slot: v}), "templated", kind) for v in values]
    return out


def self_instruct() -> list[Prompt]:
    """Meta-prompts: their answers are prompts (see `requests_from`)."""
    spec = json.loads(_asset("distill_prompts.json"))
    return [user(tpl.format(t=t), "self_instruct", "meta") for tpl in
            spec["templates"]["self_instruct"] for t in spec["topics"]]


# a "question" that only echoes the meta-prompt ("What is a question about lakes that ...?")
ECHO = re.compile(r"\bquestions?\b|\bfew sentences\b|\bcurious student\b", re.I)


def requests_from(answers: list[dict]) -> list[Prompt]:
    """Turn answered meta-prompts into prompts: the quoted question of the answer, else its
    first line, if it reads like a question (8-200 characters, ends with '?', does not
    speak about the assistant itself nor echo the meta-prompt)."""
    out = []
    for rec in answers:
        text = rec["messages"][-1]["content"].strip()
        quoted = re.findall(r'"([^"]{8,200}\?)"', text)
        line = quoted[0] if quoted else text.splitlines()[0].strip()
        if 8 <= len(line) <= 200 and line.endswith("?") and not re.match(
                r"(i'm|i am|sure|what's your request|what can i help)", line.lower()) \
                and not ECHO.search(line):
            out.append(user(line, "self_instruct", "generated"))
    return out


def docs() -> list[Prompt]:
    """Prompts from the Python documentation that ships with the interpreter."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paras = [p.strip() for p in topics[name].split("\n\n")]
        for para in paras:
            if 200 <= len(para) <= 700 and not para.startswith(" "):
                out.append(user("Explain this passage from the Python documentation in "
                                f"simple words:\n\n{para}", "docs", "explain"))
                out.append(user(f"Summarise in one sentence:\n\n{para}", "docs", "rewrite"))
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        for fname, fn in sorted(vars(mod).items()):
            if not fname.startswith("_") and callable(fn) and inspect.getdoc(fn):
                out.append(user(f"What does the Python function {name}.{fname} do? Give a "
                                "short example.", "docs", "code"))
    for tname in ("str", "list", "dict", "set"):
        for fname in sorted(vars(getattr(builtins, tname))):
            if not fname.startswith("_"):
                out.append(user(f"How do I use the Python {tname} method {fname}? Show an "
                                "example.", "docs", "code"))
    return out


def follow_ups(answers: list[dict], seed: int = 0) -> list[Prompt]:
    """Second turns: an answered single-turn conversation plus a follow-up question."""
    spec = json.loads(_asset("distill_prompts.json"))
    rng = random.Random(seed)
    out = []
    for rec in answers:
        if (len(rec["messages"]) == 2 and rec.get("finish", "stop") == "stop"
                and rec.get("kind") not in ("meta", "math")):
            msgs = rec["messages"] + [{"role": "user", "content": rng.choice(spec["follow_ups"])}]
            out.append(Prompt(msgs, "multiturn", "multiturn"))
    return out


def select(prompts: list[Prompt], n: int, seed: int, excluded: set[str],
           taken: set[str] = frozenset()) -> list[Prompt]:
    """n distinct prompts in a seeded order (the same arguments give the same list): none
    is in `taken` (chosen by an earlier source), none has a user turn in `excluded`."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    seen, out = set(taken), []
    for p in order:
        turns = {key([m]) for m in p.messages if m["role"] == "user"}
        if p.key in seen or turns & excluded:
            continue
        seen.add(p.key)
        out.append(p)
        if len(out) == n:
            break
    return out


class AnswerFile:
    """Answers appended to `path` (one conversation per line, with its source, kind and
    finish reason); prompts with an empty answer go to `<path>.dropped`, so a resumed run
    skips both."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.dropped = self.path.with_name(self.path.name + ".dropped")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read(self.path)
        self.done = {key(r["messages"][:-1]) for r in self.records}
        self.done |= {key(r["messages"]) for r in self._read(self.dropped)}

    @staticmethod
    def _read(path: Path) -> list[dict]:
        if not path.exists():
            return []
        text = path.read_text()
        if text and not text.endswith("\n"):  # a line cut by a kill: drop it, then append
            text = text[:text.rfind("\n") + 1]
            path.write_text(text)
        out = []
        for i, line in enumerate(text.splitlines()):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{i + 1}: not JSON") from None
        return out

    def write(self, prompt: Prompt, text: str, finish: str = "stop") -> None:
        """Record an answer; `finish` "length" marks one cut by the token budget (kept: a
        training row of seq_len <= that budget never reaches the cut); an empty answer is
        remembered as dropped."""
        if not text.strip():
            rec, target = {"messages": prompt.messages, "source": prompt.source}, self.dropped
        else:
            rec = {"messages": prompt.messages + [{"role": "assistant", "content": text.strip()}],
                   "source": prompt.source, "kind": prompt.kind, "finish": finish}
            target = self.path
            self.records.append(rec)
        with open(target, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.done.add(prompt.key)
