"""What a text costs: its token count under several tokenizers, and its price under several models (the token page).

Counting and prices are those of `POST tokens/count` and `GET tokens/compare`: tokenizers.py counts, the price
catalog (with the project's overrides) prices. A model's tokens are counted with the tokenizer that counts its
usage (an OpenAI encoding, or the tokenizer of the newest registered version of that name in the project).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal

from apps.core.models import Project

from . import tokenizers
from .pricing import MILLION, PriceBook, catalog_current

# bpe-openai's legacy encodings (gpt2, r50k, p50k) need tiktoken_ext, which the project does not install.
COMPARED_TOKENIZERS = ("o200k_base", "cl100k_base", "voyage3_base")
COMPARED_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "gpt-4",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
)
COST_QUANTUM = Decimal("1e-8")


@dataclass(frozen=True)
class TokenizerCount:
    tokenizer: str
    label: str
    tokens: int
    characters_per_token: float | None


@dataclass(frozen=True)
class ModelCost:
    model: str
    tokenizer: str | None
    tokens: int | None
    input_per_million: Decimal | None
    output_per_million: Decimal | None
    input_cost: Decimal | None
    output_cost: Decimal | None
    currency: str
    note: str = ""


@dataclass(frozen=True)
class TokenComparison:
    characters: int
    tokenizers: list[TokenizerCount]
    models: list[ModelCost]
    catalog_version: int | None
    errors: list[str]


def _ratio(characters: int, tokens: int) -> float | None:
    return round(characters / tokens, 2) if tokens else None


def token_comparison(
    *,
    project: Project,
    text: str,
    models: list[str] | None = None,
    versions: list[tuple[int, str]] | None = None,
    now: datetime.datetime,
) -> TokenComparison:
    """Count `text` with the compared tokenizers and those of `versions` ((id, label) of registered versions the
    caller may see), and price it as input and as output of the compared models and `models`."""
    counts: dict[str, int] = {}
    errors: list[str] = []

    def count(name: str) -> int:
        if name not in counts:
            counts[name] = tokenizers.count_text(tokenizers.counter_get(name), text)
        return counts[name]

    rows = [TokenizerCount(name, name, count(name), _ratio(len(text), count(name))) for name in COMPARED_TOKENIZERS]
    for version_id, label in versions or []:
        name = f"{tokenizers.REGISTRY_PREFIX}{version_id}"
        try:
            rows.append(TokenizerCount(name, label, count(name), _ratio(len(text), count(name))))
        except tokenizers.TokenizerUnavailable as exc:
            errors.append(str(exc))
    catalog = catalog_current()
    book = PriceBook(project_id=project.pk, catalog=catalog)
    priced = []
    for model in dict.fromkeys([*(models or []), *COMPARED_MODELS]):
        priced.append(_model_cost(project, model, book, count, now))
    return TokenComparison(
        characters=len(text),
        tokenizers=rows,
        models=priced,
        catalog_version=catalog.version if catalog else None,
        errors=errors,
    )


def _model_cost(project: Project, model: str, book: PriceBook, count, now: datetime.datetime) -> ModelCost:
    entry = book.resolve(model, "", now)
    tokenizer = tokenizers.tokenizer_for_model(project_id=project.pk, model=model)
    tokens, note = None, ""
    if tokenizer is None:
        note = "No tokenizer is known for this model."
    else:
        try:
            tokens = count(tokenizer)
        except tokenizers.TokenizerUnavailable as exc:
            tokenizer, note = None, str(exc)
    if entry is None:
        note = note or "No price in the catalog."
    return ModelCost(
        model=model,
        tokenizer=tokenizer,
        tokens=tokens,
        input_per_million=entry.input_per_million if entry else None,
        output_per_million=entry.output_per_million if entry else None,
        input_cost=_cost(tokens, entry.input_per_million) if entry else None,
        output_cost=_cost(tokens, entry.output_per_million) if entry else None,
        currency=entry.currency if entry else "",
        note=note,
    )


def _cost(tokens: int | None, per_million: Decimal) -> Decimal | None:
    return None if tokens is None else (tokens * per_million / MILLION).quantize(COST_QUANTUM)
