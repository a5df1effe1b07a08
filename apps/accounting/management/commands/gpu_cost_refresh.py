"""Recompute GPU-hour cost for a period (a backfill after beat was down): manage.py gpu_cost_refresh --from T [--to T]

Without --from it recomputes the recent hours, as the beat task does. Idempotent: run it as often as needed.
"""

import datetime

from django.core.management.base import BaseCommand, CommandError

from apps.accounting.gpu_cost import gpu_cost_refresh


def _moment(value: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"'{value}' is not an ISO 8601 date or time.")
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class Command(BaseCommand):
    help = "Recompute the hourly GPU cost of self-hosted deployments from their state events."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="start", help="First hour (ISO 8601, UTC unless it says otherwise).")
        parser.add_argument("--to", dest="end", help="End (ISO 8601); default: now.")

    def handle(self, *args, start: str | None, end: str | None, **options):
        result = gpu_cost_refresh(
            start=_moment(start) if start else None,
            end=_moment(end) if end else None,
        )
        if result.skipped:
            raise CommandError("Another GPU cost refresh is running; try again in a moment.")
        self.stdout.write(
            f"GPU cost from {result.start.isoformat()} to {result.end.isoformat()}: "
            f"{result.rows} rows written, {result.deleted} removed."
        )
