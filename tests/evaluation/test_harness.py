"""nextblock as an lm-eval model: loglikelihood equals the sum of log-probabilities computed
directly from the model, and a local two-item task (a JSON file, no hub) runs end to end."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from nextblock.evaluation.harness import NextBlockLM  # noqa: E402
from tests.helpers import save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("harness") / "tiny")


@pytest.fixture(scope="module")
def model(tiny):
    return NextBlockLM.create_from_arg_string(f"pretrained={tiny},dtype=float32,mode=ar,max_new_tokens=5")


def test_loglikelihood_equals_direct_log_probs(model):
    reqs = [Instance("loglikelihood", {}, ("w1 w2 w3", " w4 w5"), 0),
            Instance("loglikelihood", {}, ("w7", " w8"), 0)]
    got = model.loglikelihood(reqs)
    hf = model.lm.model
    for (ctx, cont), (ll, greedy) in zip([r.args for r in reqs], got):
        c = model.lm.tokenizer(ctx, add_special_tokens=False)["input_ids"]
        t = model.lm.tokenizer(ctx + cont, add_special_tokens=False)["input_ids"][len(c):]
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([c + t])).logits[0], -1)
        direct = sum(logp[len(c) - 1 + i, tok].item() for i, tok in enumerate(t))
        assert ll == pytest.approx(direct, abs=1e-4)
        assert greedy == all(logp[len(c) - 1 + i].argmax().item() == tok
                             for i, tok in enumerate(t))
    text = "w1 w2 w3 w4"
    rolling = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = model.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    first = model.lm.tokenizer.bos_token_id  # every token predicted, the first from <s>
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([[first] + ids])).logits[0], -1)
    assert rolling[0] == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(ids)),
                                       abs=1e-4)


def test_local_task_runs_end_to_end(model, tiny, tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"q": "w1 w2", "choices": [" w3", " w4"], "label": 0},
        {"q": "w5 w6", "choices": [" w7", " w8"], "label": 1}]))
    (tmp_path / "two.yaml").write_text(f"""task: nextblock_two
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    res = simple_evaluate(model=model, tasks=["nextblock_two"],
                          task_manager=TaskManager(include_path=str(tmp_path)))
    acc = res["results"]["nextblock_two"]["acc,none"]
    expected = []
    for q, choices, label in (("w1 w2", [" w3", " w4"], 0), ("w5 w6", [" w7", " w8"], 1)):
        scores = [model.score(q, c)[0] for c in choices]
        expected.append(scores.index(max(scores)) == label)
    assert acc == pytest.approx(sum(expected) / 2)
    reqs = [Instance("generate_until", {}, (q, {"until": [u]}), 0)
            for q, u in [("w1 w2", "\n"), ("w3", "w9"), ("w4 w5 w6", "\n"), ("w7", "w2")]]
    one = model.generate_until(reqs)
    assert one == [model.lm.generate(r.args[0], chat=False, mode="ar", max_new_tokens=5,
                                     stop=r.args[1]["until"]).text for r in reqs]
    batched = NextBlockLM.create_from_arg_string(f"pretrained={tiny},dtype=float32,mode=ar,max_new_tokens=5",
                                                 {"batch_size": 3})
    assert batched.batch_size == 3 and batched.generate_until(reqs) == one
