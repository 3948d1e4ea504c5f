"""The audit trail and the server's heartbeat, moved from orchestration/ with their rows."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _content_types(from_app: str, to_app: str, models: tuple[str, ...]):
    """Keep the models' content types (and so permissions and admin history) under their new app."""

    def move(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        for model in models:
            if not ContentType.objects.filter(app_label=to_app, model=model).exists():
                ContentType.objects.filter(app_label=from_app, model=model).update(app_label=to_app)

    def back(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        for model in models:
            if not ContentType.objects.filter(app_label=from_app, model=model).exists():
                ContentType.objects.filter(app_label=to_app, model=model).update(app_label=from_app)

    return migrations.RunPython(move, back)


def _rename_tables(pairs: tuple[tuple[str, str], ...]):
    """Rename tables so that every foreign key pointing at them follows, on SQLite too.

    Django edits SQLite schemas with legacy_alter_table on, under which a rename leaves other
    tables' REFERENCES naming the old table (AlterModelTable alone would break every insert
    into a table that points here); with it off, SQLite rewrites those references.
    PostgreSQL's constraints point at the table itself, whatever its name.
    """

    def rename(schema_editor, renames):
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


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('orchestration', '0005_custom_action'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The models moved here from orchestration/: the tables are kept (state only), then renamed.
        migrations.SeparateDatabaseAndState(
            state_operations=[
            migrations.CreateModel(
                name='ServiceBeat',
                fields=[
                    ('name', models.CharField(max_length=50, primary_key=True, serialize=False)),
                    ('alive_at', models.DateTimeField()),
                    ('up_since', models.DateTimeField()),
                ],
                options={'db_table': 'orchestration_servicebeat'},
            ),
            migrations.CreateModel(
                name='AuditEvent',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('at', models.DateTimeField(db_index=True)),
                    ('actor_label', models.CharField(blank=True, max_length=200)),
                    ('object_type', models.CharField(max_length=40)),
                    ('object_id', models.CharField(max_length=200)),
                    ('action', models.CharField(max_length=60)),
                    ('before', models.JSONField(blank=True, default=dict)),
                    ('after', models.JSONField(blank=True, default=dict)),
                    ('message', models.CharField(blank=True, max_length=500)),
                    ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'orchestration_auditevent',
                    'ordering': ['-at', '-id'],
                    'indexes': [models.Index(fields=['object_type', 'object_id', 'at'], name='audit_object_idx')],
                },
            ),
            ],
        ),
        _content_types("orchestration", "core", ("servicebeat", "auditevent",)),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelTable(name='servicebeat', table=None),
                migrations.AlterModelTable(name='auditevent', table=None),
            ],
            database_operations=[_rename_tables((("orchestration_servicebeat", "core_servicebeat"), ("orchestration_auditevent", "core_auditevent"),))],
        ),
    ]
