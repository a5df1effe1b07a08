"""API token secrets: generation and hashing. A token is shown once; only its SHA-256 is stored."""

import hashlib
import secrets

from .models import ApiToken


def token_generate() -> str:
    return ApiToken.PREFIX + secrets.token_urlsafe(32)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_display_prefix(raw: str) -> str:
    return raw[: len(ApiToken.PREFIX) + 8]
