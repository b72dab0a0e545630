"""Text in and out of a model, shared by the OpenAI API and `prismn generate`.

- :func:`prompt_ids`: a chat (through the tokenizer's own chat template) or a plain prompt -> ids;
- :func:`end_of_turn_ids`: every id that ends an answer (EOS and the template's end-of-turn marker);
- :class:`TextStream`: token ids -> text as it becomes final. Detokenisation is incremental (only a
  short window of tokens is decoded per new token, as vLLM does, never the whole answer again) and
  an unfinished multi-byte character (U+FFFD) is held back until its last byte arrives; text that
  could still be the start of a stop string is held back until it cannot match, and a stop string
  ends the answer before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS ids and the chat template's end-of-turn marker."""
    out: set[int] = set()
    for v in (tokenizer.eos_token_id, getattr(tokenizer, "eos_token_ids", None)):
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, list | tuple | set):
            out.update(int(x) for x in v if isinstance(x, int))
    vocab = tokenizer.get_vocab()
    for marker in END_OF_TURN_MARKERS:
        if marker in vocab:
            out.add(int(vocab[marker]))
    return sorted(out)


def prompt_ids(tokenizer: Any, prompt: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> list[int]:
    """A chat (``messages``, rendered by the model's own template with the assistant's turn opened)
    or a plain ``prompt`` as token ids."""
    if messages is not None:
        out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]
    return [int(t) for t in tokenizer(prompt or "")["input_ids"]]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (may still become one)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class TextStream:
    """Turn generated ids into final text, one token at a time.

    ``push(token)`` returns the text that became final with it ('' while held back); ``finish()``
    returns what was still held when generation ended. ``finish_reason`` becomes "stop" at an
    end-of-turn id or a stop string; ``text`` is the answer so far (a stop string and what follows it
    are never part of it).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = (), end_ids: Sequence[int] = ()):
        self.tok = tokenizer
        self.stops = [s for s in stops if s]
        self.end_ids = set(end_ids)
        self.ids: list[int] = []
        self.text = ""  # decoded so far (before any stop string)
        self.sent = 0  # characters of text already returned
        self.finish_reason: str | None = None
        self._prefix = 0  # window start: the tokens whose text is already decoded are its context
        self._read = 0  # tokens decoded into self.text so far

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        if self.finish_reason is not None:
            return ""
        if token in self.end_ids:
            self.finish_reason = "stop"
            return self._release(len(self.text))
        self.ids.append(int(token))
        before = self._decode(self.ids[self._prefix: self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._check_stops()

    def _check_stops(self) -> str:
        if self.stops:
            start = max(0, self.sent - max(len(s) for s in self.stops))
            cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
                return self._release(len(self.text))
        return self._release(len(self.text) - _held_back(self.text, self.stops))

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent: upto], upto
        return out

    def finish(self) -> str:
        """At the end of generation: the held-back text, which can no longer become a stop string."""
        return self._release(len(self.text))
