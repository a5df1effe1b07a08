"""A dedicated consumer of the gateway's usage stream, for deployments that prefer a process to beat ticks."""

import time

import redis
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from apps.accounting.usage_stream import drain


class Command(BaseCommand):
    help = "Store the gateway's usage records as they arrive (runs until stopped)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Drain what is there now and exit.")

    def handle(self, *args, once: bool = False, **options):
        while True:
            try:
                result = drain(max_batches=100, block_ms=None if once else 1000)
            except redis.RedisError as exc:  # Redis restarting: what was read but not acknowledged stays pending
                if once:
                    raise
                self.stderr.write(f"Redis unavailable ({exc.__class__.__name__}); retrying")
                close_old_connections()
                time.sleep(0.5)
                continue
            if result.read:
                self.stdout.write(f"stored {result.stored}, duplicates {result.duplicates}, rejected {result.rejected}")
            if once:
                return
