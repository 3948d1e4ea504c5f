"""The sequence appends take positions from (PostgreSQL only; SQLite serializes writers)."""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

GAP = 1024


def create_sequence(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE SEQUENCE IF NOT EXISTS queues_entry_position_seq INCREMENT BY {GAP} START WITH {GAP}"
        )


def drop_sequence(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS queues_entry_position_seq")


class Migration(migrations.Migration):
    dependencies = [("queues", "0001_queues_and_entries")]

    operations = [migrations.RunPython(create_sequence, drop_sequence)]
