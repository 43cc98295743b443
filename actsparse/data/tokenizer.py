"""Byte-level tokenizer: UTF-8 bytes are the tokens, so there is no vocabulary file."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Maps text to its UTF-8 bytes (vocabulary of 256) and back.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé").tolist()
        [104, 195, 169]
        >>> tok.decode(tok.encode("hé"))
        'hé'
    """

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        data = text.encode("utf-8")
        if not data:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

    def decode(self, tokens: torch.Tensor | list[int]) -> str:
        values = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return bytes(values).decode("utf-8", errors="replace")
