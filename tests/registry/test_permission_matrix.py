"""The registry's transfer routes in the permission matrix.

Their rows and runner live in test_transfer_api.py (they need uploads, parts and stored files set up there);
exposing them here as SPEC lets the core matrix check that every route under /api/v1/ is covered.
"""

from .test_transfer_api import TRANSFER_SPEC

SPEC = TRANSFER_SPEC
