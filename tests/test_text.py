"""The text component shared by the API and `prismn generate`: incremental detokenisation equals a full
decode, unfinished multi-byte characters are held back, stop strings are held back until they cannot
match and end the answer before them."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

CORPUS = ["naïve café in Zürich, 東京 and São Paulo: ünïcödé everywhere. The end.",
          "Paris is the capital of France. Oslo is cold; STOP here please."] * 30


@pytest.fixture(scope="module")
def tok():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=["<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>")


def stream(tok, ids, stops=(), end=()):
    from prismn.text import TextStream

    ts = TextStream(tok, stops, end)
    parts = [ts.push(t) for t in ids]
    parts.append(ts.finish())
    return ts, parts


@pytest.mark.parametrize("text", CORPUS[:2])
def test_incremental_text_equals_a_full_decode_and_never_shows_a_broken_character(tok, text):
    ids = tok.encode(text)
    ts, parts = stream(tok, ids)
    assert "".join(parts) == tok.decode(ids, skip_special_tokens=True) == ts.text
    assert not any(p.endswith("\ufffd") for p in parts)


def test_a_split_multibyte_character_waits_for_its_last_byte(tok):
    ids = tok.encode("東京")
    one_by_one = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in s for s in one_by_one), "the fixture must split a character across tokens"
    ts, parts = stream(tok, ids)
    assert "".join(parts) == "東京" and "\ufffd" not in "".join(parts)
    ts, parts = stream(tok, ids[:-1])  # cut short: the unfinished character is not shown at all
    assert "\ufffd" not in "".join(parts) and "\ufffd" not in ts.text


def test_stop_strings_are_held_back_and_cut(tok):
    ids = tok.encode("Oslo is cold; STOP here please.")
    ts, parts = stream(tok, ids, stops=["STOP"])
    assert ts.finish_reason == "stop" and "".join(parts) == "Oslo is cold; " == ts.text
    # while "ST" could still become "STOP", it is not shown
    from prismn.text import TextStream

    ts = TextStream(tok, ["STOP"])
    shown = "".join(ts.push(t) for t in tok.encode("Oslo is cold; ST"))
    assert shown == "Oslo is cold; " and ts.finish_reason is None
    assert ts.finish() == "ST"  # generation ended: it can no longer match


def test_an_end_of_turn_id_ends_the_answer(tok):
    from prismn.text import end_of_turn_ids

    end = end_of_turn_ids(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in end
    ids = tok.encode("Paris is") + end[:1] + tok.encode(" more")
    ts, parts = stream(tok, ids, end=end)
    assert ts.finish_reason == "stop" and "".join(parts) == "Paris is"


def test_each_token_decodes_a_short_window_not_the_whole_answer(tok):
    ids = tok.encode(" ".join(CORPUS[:4]))
    assert len(ids) > 60
    seen: list[int] = []
    real = tok.decode

    class Spy:
        def __getattr__(self, name):
            return getattr(tok, name)

        def decode(self, window, **kw):
            seen.append(len(window))
            return real(window, **kw)

    ts, parts = stream(Spy(), ids)
    assert "".join(parts) == tok.decode(ids)
    assert max(seen) <= 8  # a few tokens of context, however long the answer grows
