"""API keys and per-user secrets, moved from orchestration/ with their rows."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from core.migrate import move_content_types, rename_tables


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('orchestration', '0005_custom_action'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('queues', '0004_entry_order_with_id'),
        # After every migration that may rebuild a table pointing at ApiKey (SQLite rebuilds
        # tables from the migration state, which names the old table until the rename).
        ('workers', '0005_clearml_runtime'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The models moved here from orchestration/: the tables are kept (state only), then renamed.
        migrations.SeparateDatabaseAndState(
            state_operations=[
            migrations.CreateModel(
                name='ApiKey',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('access_key', models.CharField(max_length=40, unique=True)),
                    ('digest', models.CharField(max_length=64)),
                    ('name', models.CharField(blank=True, max_length=100)),
                    ('role', models.CharField(choices=[('admin', 'Admin'), ('user', 'User'), ('agent', 'Agent')], default='user', max_length=10)),
                    ('scope', models.CharField(choices=[('read', 'Read only'), ('write', 'Read and write')], default='write', max_length=10)),
                    ('worker_prefix', models.CharField(blank=True, max_length=100)),
                    ('created_at', models.DateTimeField(auto_now_add=True)),
                    ('expires_at', models.DateTimeField(blank=True, null=True)),
                    ('revoked_at', models.DateTimeField(blank=True, null=True)),
                    ('last_used_at', models.DateTimeField(blank=True, null=True)),
                    ('allowed_queues', models.ManyToManyField(blank=True, related_name='+', to='queues.queue')),
                    ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_keys', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'orchestration_apikey',
                    'ordering': ['-created_at'],
                },
            ),
            migrations.CreateModel(
                name='UserSecret',
                fields=[
                    ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                    ('name', models.CharField(max_length=100)),
                    ('ciphertext', models.TextField()),
                    ('updated_at', models.DateTimeField(auto_now=True)),
                    ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='secrets', to=settings.AUTH_USER_MODEL)),
                ],
                options={
                    'db_table': 'orchestration_usersecret',
                    'ordering': ['owner_id', 'name'],
                    'constraints': [models.UniqueConstraint(fields=('owner', 'name'), name='user_secret_unique_name')],
                },
            ),
            ],
        ),
        move_content_types("orchestration", "accounts", ("apikey", "usersecret",)),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelTable(name='apikey', table=None),
                migrations.AlterModelTable(name='usersecret', table=None),
            ],
            database_operations=[rename_tables((("orchestration_apikey", "accounts_apikey"), ("orchestration_apikey_allowed_queues", "accounts_apikey_allowed_queues"), ("orchestration_usersecret", "accounts_usersecret"),))],
        ),
    ]
