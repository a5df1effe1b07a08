"""Local development: the devstack (`make run`) exports DATABASE_URL and REDIS_URL."""

from .base import *  # noqa: F403

DEBUG = True
ALLOWED_HOSTS = ["*"]
