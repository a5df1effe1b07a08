"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key from CONTROLPLANE_ENCRYPTION_KEY or, by
default, derived from SECRET_KEY. Decrypted values never leave the process through an API, page or log."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(key_material: str) -> Fernet:
    try:
        return Fernet(key_material.encode())
    except ValueError:  # not a Fernet key: derive one
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key_material.encode()).digest()))


def _current() -> Fernet:
    return _fernet(settings.ENCRYPTION_KEY or f"controlplane-secrets:{settings.SECRET_KEY}")


def encrypt(value: str) -> str:
    return _current().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("The secret cannot be decrypted with the configured key.") from exc
