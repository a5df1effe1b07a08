"""Token counting: OpenAI encodings from `bpe-openai` (shipped offline), and registered versions' own tokenizers.

Tokenizer names: "o200k_base", "cl100k_base" (or any other bpe-openai encoding) and "registry:<version id>".
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bpe_openai

from apps.core.numbers import whole_number

REGISTRY_PREFIX = "registry:"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "config.json",
)
# Model-name prefixes newer than bpe-openai's table, most specific first.
OPENAI_PREFIXES = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)
# OpenAI's accounting of chat messages: a few tokens of framing per message and to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


class TokenizerUnavailable(ValueError):
    """No tokenizer by that name, or none known for the model."""


@dataclass(frozen=True)
class Counter:
    name: str
    encode_len: callable
    chat_len: callable


def openai_encoding_name(model: str) -> str | None:
    try:
        return bpe_openai.encoding_name_for_model(model)
    except Exception:  # bpe-openai raises its own errors (and KeyError) for unknown names
        pass
    return next((encoding for prefix, encoding in OPENAI_PREFIXES if model.startswith(prefix)), None)


@functools.cache
def _openai_counter(name: str) -> Counter:
    if name not in bpe_openai.list_encoding_names():
        raise TokenizerUnavailable(f"Unknown tokenizer '{name}'. Known: {', '.join(tokenizer_names())}.")
    try:
        encoding = bpe_openai.get_encoding(name)
        encoding.encode_ordinary("")
    except RuntimeError as exc:  # legacy encodings (gpt2, r50k, p50k) need tables bpe-openai does not ship
        raise TokenizerUnavailable(f"Tokenizer '{name}' is not available offline ({exc}).") from None

    def encode_len(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    def chat_len(messages: Sequence[dict]) -> int:
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):
                    total += encode_len(value) + (TOKENS_PER_NAME if key == "name" else 0)
        return total

    return Counter(name=name, encode_len=encode_len, chat_len=chat_len)


_registry_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _registry_counter(version_id: int) -> Counter:
    """Load a registered version's tokenizer from its stored files (once per version id per process)."""
    from transformers import AutoTokenizer

    from apps.registry.ingest import file_blocks
    from apps.registry.models import VersionFile

    files = list(VersionFile.objects.filter(version_id=version_id, path__in=TOKENIZER_FILES))
    if not any(f.path in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt") for f in files):
        raise TokenizerUnavailable(f"Registered version {version_id} has no tokenizer files.")
    directory = Path(tempfile.mkdtemp(prefix="acct-tokenizer-"))
    try:
        for version_file in files:
            with open(directory / version_file.path, "wb") as out:
                for block in file_blocks(version_file):
                    out.write(block)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:  # a broken tokenizer is the version's problem, reported to the caller
            raise TokenizerUnavailable(f"The tokenizer of registered version {version_id} cannot be loaded: {exc}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def encode_len(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def chat_len(messages: Sequence[dict]) -> int:
        if getattr(tokenizer, "chat_template", None):
            return len(tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True))
        return sum(encode_len(str(m.get("content", ""))) for m in messages)

    return Counter(name=f"{REGISTRY_PREFIX}{version_id}", encode_len=encode_len, chat_len=chat_len)


def registry_version_id(name: str) -> int | None:
    """The version id of a `registry:<id>` tokenizer name, or None when the rest is not an id."""
    if not name.startswith(REGISTRY_PREFIX):
        return None
    return whole_number(name[len(REGISTRY_PREFIX) :], upper=2**63) or None  # ids start at 1


def counter_get(name: str) -> Counter:
    if name.startswith(REGISTRY_PREFIX):
        version_id = registry_version_id(name)
        if version_id is None:
            raise TokenizerUnavailable(f"'{name}' is not registry:<version id>.")
        with _registry_lock:
            return _registry_counter(version_id)
    return _openai_counter(name)


@functools.cache
def tokenizer_names() -> list[str]:
    """The OpenAI-family encodings that can count here (bpe-openai ships their tables)."""
    names = []
    for name in sorted(bpe_openai.list_encoding_names()):
        try:
            bpe_openai.get_encoding(name).encode_ordinary("")
        except RuntimeError:
            continue
        names.append(name)
    return names


def count_text(counter: Counter, text: str) -> int:
    return counter.encode_len(text)


def count_messages(counter: Counter, messages: Sequence[dict]) -> int:
    return counter.chat_len(messages)


def tokenizer_for_model(*, project_id: int, model: str) -> str | None:
    """The tokenizer that counts for a model name: an OpenAI encoding, else the newest version of a model of that
    name registered in the project that has its own tokenizer."""
    encoding = openai_encoding_name(model)
    if encoding is not None:
        return encoding
    from apps.registry.models import VersionFile

    version_id = (
        VersionFile.objects.filter(
            version__model__project_id=project_id,
            version__model__name=model,
            path="tokenizer.json",
            version__deleted_at__isnull=True,
        )
        .order_by("-version__number")
        .values_list("version_id", flat=True)
        .first()
    )
    return f"{REGISTRY_PREFIX}{version_id}" if version_id else None
