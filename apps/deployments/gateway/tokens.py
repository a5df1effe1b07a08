"""Counting prompt tokens in the gateway with the version's own tokenizer (the `tokenizers` library)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=32)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def count_tokens(tokenizer_file: str, texts: list[str]) -> int | None:
    """Tokens in the texts, or None when the tokenizer cannot be read."""
    try:
        tokenizer = _tokenizer(tokenizer_file)
    except Exception:
        return None
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False))
