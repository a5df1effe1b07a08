"""Load a price catalog version from JSON (the shipped default when no file is named). Idempotent per version."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.accounting.pricing import DEFAULT_PRICES, catalog_load


class Command(BaseCommand):
    help = "Load a dated price catalog (apps/accounting/data/default_prices.json by default)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", default=str(DEFAULT_PRICES))

    def handle(self, *args, path: str, **options):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}")
        catalog, created = catalog_load(data)
        verb = "Loaded" if created else "Already loaded:"
        self.stdout.write(f"{verb} price catalog v{catalog.version} ({catalog.entries.count()} entries).")
