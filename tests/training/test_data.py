"""Training data: packing, chat rows with response-only targets and response-aligned block
grids, mixtures, and clear errors."""

import json

import pytest

from nextblock.training.data import (DataError, collate, load_rows, pack_text, parse_source,
                                     plan, read_records, render_chat)
from tests.helpers import word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def test_pack_text_joins_documents_with_eos(tok):
    rows = pack_text(["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"], tok, 4)
    flat = [t for r in rows for t in r.ids]
    eos = tok.eos_token_id
    assert all(len(r.ids) == 4 and all(r.targets) and r.offset == 0 for r in rows)
    assert flat == (tok("w1 w2 w3")["input_ids"] + [eos] + tok("w4 w5")["input_ids"] + [eos]
                    + tok("w6 w7 w8 w9")["input_ids"] + [eos])[:len(flat)]
    assert len(rows) == 12 // 4


def test_chat_targets_are_the_assistant_turns_and_blocks_start_at_the_response(tok):
    msgs = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"},
            {"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7"}]
    row = render_chat(msgs, tok, 64)
    words = tok.convert_ids_to_tokens(row.ids)
    targeted = [w for w, t in zip(words, row.targets) if t]
    assert targeted == ["w3", "w4", "w5", "w7"]
    prompt = tok(tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert row.offset == len(prompt) and row.ids[:row.offset] == prompt


def test_chat_errors(tok):
    with pytest.raises(DataError, match="conversation 3 has no assistant turn"):
        render_chat([{"role": "user", "content": "w1"}], tok, 16, index=3)
    long = [{"role": "user", "content": " ".join(["w1"] * 40)},
            {"role": "assistant", "content": "w2"}]
    assert render_chat(long, tok, 16) is None  # no response token fits


def test_files_folders_and_fields(tmp_path, tok):
    (tmp_path / "a.txt").write_text("w1 w2 w3\nw4 w5\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "w1 w2"}) + "\n")
    assert read_records(tmp_path / "a.txt")[0] == "text"
    with pytest.raises(DataError, match="mixes file types"):
        read_records(tmp_path)
    with pytest.raises(DataError, match=r"no field 'text' \(fields: body\)"):
        read_records(tmp_path / "b.jsonl")
    assert read_records(tmp_path / "b.jsonl", "body") == ("text", ["w1 w2"])
    with pytest.raises(DataError, match="data not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no training row of 64 tokens"):
        load_rows(str(tmp_path / "a.txt"), tok, 64)


def test_mixture_plan_is_deterministic_and_weighted():
    a = plan([10, 5], [3.0, 1.0], 4000, seed=1)
    assert a == plan([10, 5], [3.0, 1.0], 4000, seed=1)
    assert a != plan([10, 5], [3.0, 1.0], 4000, seed=2)
    share = sum(s == 0 for s, _ in a) / len(a)
    assert 0.72 < share < 0.78
    first_epoch = [r for s, r in a if s == 0][:10]
    assert sorted(first_epoch) == list(range(10))  # every row once per epoch
    assert parse_source("data/x.jsonl:2.5") == ("data/x.jsonl", 2.5)
    assert parse_source("data/x.jsonl") == ("data/x.jsonl", 1.0)
    with pytest.raises(DataError, match="weight must be > 0"):
        parse_source("x.jsonl:0")


def test_collate_pads_right(tok):
    rows = pack_text(["w1 w2 w3 w4 w5 w6 w7"], tok, 4)
    rows[1].ids, rows[1].targets = rows[1].ids[:2], rows[1].targets[:2]
    ids, lengths, targets, offsets, docs = collate(rows, 0)
    assert docs is None  # rows packed without document boundaries
    assert ids.shape == (2, 4) and lengths.tolist() == [4, 2]
    assert ids[1, 2:].tolist() == [0, 0] and not targets[1, 2:].any()


def test_packing_with_documents_records_boundaries(tok):
    """No padding waste: documents are concatenated (each closed by EOS) and every token
    knows its document; a document cut by a row boundary goes on in the next row."""
    texts = ["w1 w2", "w3 w4 w5 w6", "", "w7 w8 w9"]  # 3 + 5 + 4 tokens: three rows
    plain = pack_text(texts, tok, 4)
    rows = pack_text(texts, tok, 4, documents=True)
    assert [r.ids for r in rows] == [r.ids for r in plain]  # the same tokens, no padding
    stream = [i for r in rows for i in r.ids]
    docs = [d for r in rows for d in r.docs]
    eos = tok.eos_token_id
    # a document ends with its EOS: the next token starts another document
    for i in range(len(stream) - 1):
        assert (docs[i] != docs[i + 1]) == (stream[i] == eos)
    assert sorted(set(docs)) == [0, 1, 3]  # the empty text adds nothing
    ids, lengths, targets, offsets, d = collate(rows, 0)
    assert d.tolist() == [r.docs for r in rows]
