"""The audit trail and the server's heartbeat, moved from orchestration/ with their rows."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from core.migrate import move_content_types, rename_tables


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
        move_content_types("orchestration", "core", ("servicebeat", "auditevent",)),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelTable(name='servicebeat', table=None),
                migrations.AlterModelTable(name='auditevent', table=None),
            ],
            database_operations=[rename_tables((("orchestration_servicebeat", "core_servicebeat"), ("orchestration_auditevent", "core_auditevent"),))],
        ),
    ]
