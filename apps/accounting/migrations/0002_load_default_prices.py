from django.db import migrations


def load(apps, schema_editor):
    from apps.accounting.pricing import catalog_load_default

    catalog_load_default(
        catalog_model=apps.get_model("accounting", "PriceCatalog"),
        entry_model=apps.get_model("accounting", "PriceEntry"),
    )


class Migration(migrations.Migration):
    dependencies = [("accounting", "0001_initial")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
