import django.db.models.deletion
from django.db import migrations, models

# The index Django made for the foreign key; (project, event id) and (project, -time) already lead with the column.
INDEX = "accounting_usageevent_project_id_0588d2b2"


class Migration(migrations.Migration):
    # Drop the index without locking the event table against ingestion (CONCURRENTLY runs outside a transaction);
    # AlterField alone would also drop and re-add the foreign key, re-checking every stored event.
    atomic = False

    dependencies = [
        ("accounting", "0003_deployment_cost_hourly"),
        ("core", "0004_gateway_rate_limits"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usageevent",
                    name="project",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="core.project",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}",
                    reverse_sql=f'CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON accounting_usageevent ("project_id")',
                ),
            ],
        ),
    ]
