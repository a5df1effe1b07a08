"""JSON bodies the database can hold: no NUL characters (PostgreSQL text and jsonb refuse them), bounded nesting."""

from __future__ import annotations

import io

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 64
# orjson reads integers beyond 64 bits as floats: a body with a run of 19 digits goes to the standard library.
DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
LONG_NUMBER = b"0" * 19


def _check(data, *, nul_possible: bool = True) -> None:
    """Walk the parsed body without recursion, so a hostile body cannot exhaust the stack later either.

    nul_possible=False: the body's text holds no \\u0000, so only the nesting needs checking. (Parsed JSON holds
    exact dicts, lists and strs, so exact type tests do.)"""
    if type(data) is str:
        _check_string(data)
    pending = [(data, 1)] if type(data) in (dict, list) else []
    while pending:
        value, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.")
        if type(value) is dict:
            if nul_possible:
                for key in value:
                    _check_string(key)
            value = value.values()
        for item in value:
            kind = type(item)
            if kind is str:
                if nul_possible:
                    _check_string(item)
            elif kind is dict or kind is list:
                pending.append((item, depth + 1))


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise ParseError("JSON parse error - NUL characters (\\u0000) are not allowed.")


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.")
        _check(data)
        return data


class FastJSONParser(JSONParser):
    """JSONParser's result and errors, parsed by orjson: for large bodies (usage batches of 1,000 events).

    Bodies orjson reads differently (integers beyond 64 bits) or refuses (also what the standard library
    accepts: 1e400 as Infinity, lone surrogates) go to JSONParser, so results and error messages stay the same."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read()
        if encoding.lower() in ("utf-8", "utf8") and LONG_NUMBER not in raw.translate(DIGITS_AS_ZEROS):
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
            else:
                # JSON text can only carry NUL as the escape \u0000 (raw control characters are refused).
                _check(data, nul_possible=b"\\u0000" in raw)
                return data
        return super().parse(io.BytesIO(raw), media_type, parser_context)
