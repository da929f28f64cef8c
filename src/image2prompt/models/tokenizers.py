"""Text tokenizers behind one small interface: ids without special tokens, untruncated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TextTokenizer(Protocol):
    sot_id: int
    eot_id: int
    pad_id: int
    context_length: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens and without truncation."""


class OpenClipSimpleTokenizer:
    """open_clip's BPE tokenizer (OpenAI and LAION CLIP models)."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self.sot_id = int(tok.sot_token_id)
        self.eot_id = int(tok.eot_token_id)
        self.pad_id = 0
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))


class HFTokenizerAdapter:
    """A transformers tokenizer (CLIPTokenizer / CLIPTokenizerFast)."""

    def __init__(self, tok: Any, context_length: int) -> None:
        self._tok = tok
        self.sot_id = int(tok.bos_token_id)
        self.eot_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        self.context_length = int(context_length)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False, truncation=False)["input_ids"])


def model_ids(tok: TextTokenizer, bpe: Sequence[int]) -> list[int]:
    """Start + ids + end, truncated the way CLIP tokenizers truncate: first ctx-2 ids, then end."""
    return [tok.sot_id, *bpe[: tok.context_length - 2], tok.eot_id]
