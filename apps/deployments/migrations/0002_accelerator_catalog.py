"""The accelerator catalog that ships (data/accelerators.json). Existing rows are left alone: prices edited by
admins are kept."""

import json
from pathlib import Path

from django.db import migrations

CATALOG = Path(__file__).resolve().parent.parent / "data" / "accelerators.json"


def load(apps, schema_editor):
    Accelerator = apps.get_model("deployments", "Accelerator")
    for entry in json.loads(CATALOG.read_text()):
        Accelerator.objects.get_or_create(name=entry["name"], defaults={k: v for k, v in entry.items() if k != "name"})


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
