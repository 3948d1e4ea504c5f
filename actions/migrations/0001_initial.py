"""Custom actions, moved from orchestration/ with their rows."""

from django.db import migrations, models

from core.migrate import move_content_types, rename_tables


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('orchestration', '0005_custom_action'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        # The models moved here from orchestration/: the tables are kept (state only), then renamed.
        migrations.SeparateDatabaseAndState(
            state_operations=[
            migrations.CreateModel(
                name='CustomAction',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('object_type', models.CharField(choices=[('queue', 'Queue'), ('worker', 'Worker'), ('experiment', 'Experiment')], max_length=20)),
                    ('name', models.CharField(help_text='the label in the context menu', max_length=100)),
                    ('tooltip', models.CharField(blank=True, max_length=300)),
                    ('method', models.CharField(choices=[('GET', 'GET'), ('POST', 'POST'), ('PUT', 'PUT'), ('PATCH', 'PATCH'), ('DELETE', 'DELETE')], default='POST', max_length=10)),
                    ('url', models.CharField(help_text='http(s) URL; ${id} and ${name} are replaced', max_length=2000)),
                    ('payload', models.TextField(blank=True, help_text='request body; ${id} and ${name} are replaced')),
                    ('headers', models.JSONField(blank=True, default=dict, help_text='{"Header": "value"}; ${secret} is the secret')),
                    ('secret_ciphertext', models.TextField(blank=True, editable=False)),
                    ('confirm', models.BooleanField(default=False, help_text='ask before issuing it')),
                    ('roles', models.JSONField(blank=True, default=list, help_text='who sees it: ["admin", "user"]; empty: everyone')),
                    ('from_file', models.BooleanField(default=False, editable=False, help_text='synced from CUSTOM_ACTIONS_FILE')),
                    ('order', models.PositiveSmallIntegerField(default=0)),
                ],
                options={
                    'db_table': 'orchestration_customaction',
                    'ordering': ['object_type', 'order', 'name'],
                    'constraints': [models.UniqueConstraint(fields=('object_type', 'name'), name='custom_action_unique_name')],
                },
            ),
            ],
        ),
        move_content_types("orchestration", "actions", ("customaction",)),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelTable(name='customaction', table=None),
            ],
            database_operations=[rename_tables((("orchestration_customaction", "actions_customaction"),))],
        ),
    ]
