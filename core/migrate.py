"""Operations for migrations that move models between apps with their rows (used by the
first migrations of accounts, core and actions, which took orchestration/'s models over)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def move_content_types(from_app: str, to_app: str, models: tuple[str, ...]) -> migrations.RunPython:
    """Keep the models' content types (and so permissions and admin history) under their new app."""

    def relabel(apps: Any, source: str, target: str) -> None:
        content_types = apps.get_model("contenttypes", "ContentType").objects
        for model in models:
            if not content_types.filter(app_label=target, model=model).exists():
                content_types.filter(app_label=source, model=model).update(app_label=target)

    return migrations.RunPython(
        lambda apps, schema_editor: relabel(apps, from_app, to_app),
        lambda apps, schema_editor: relabel(apps, to_app, from_app),
    )


def rename_tables(pairs: tuple[tuple[str, str], ...]) -> migrations.RunPython:
    """Rename tables so that every foreign key pointing at them follows, on SQLite too.

    Django edits SQLite schemas with legacy_alter_table on, under which a rename leaves other
    tables' REFERENCES naming the old table (AlterModelTable alone would break every insert
    into a table that points here); with it off, SQLite rewrites those references.
    PostgreSQL's constraints point at the table itself, whatever its name.
    """

    def rename(schema_editor: Any, renames: tuple[tuple[str, str], ...]) -> None:
        quote = schema_editor.quote_name
        sqlite = schema_editor.connection.vendor == "sqlite"
        if sqlite:
            schema_editor.execute("PRAGMA legacy_alter_table = OFF")
        for old, new in renames:
            schema_editor.execute(f"ALTER TABLE {quote(old)} RENAME TO {quote(new)}")
        if sqlite:
            schema_editor.execute("PRAGMA legacy_alter_table = ON")

    return migrations.RunPython(
        lambda apps, schema_editor: rename(schema_editor, pairs),
        lambda apps, schema_editor: rename(schema_editor, tuple((new, old) for old, new in pairs)),
    )
