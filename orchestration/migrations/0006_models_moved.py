"""orchestration/ only wires now: its models moved to accounts, core and actions with their rows.

State only: those apps' first migrations took the tables over (and renamed them); nothing
is dropped here.
"""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration', '0005_custom_action'),
        ('accounts', '0001_initial'),
        ('core', '0001_initial'),
        ('actions', '0001_initial'),
        ('workers', '0006_alter_worker_api_key'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='ApiKey'),
                migrations.DeleteModel(name='UserSecret'),
                migrations.DeleteModel(name='AuditEvent'),
                migrations.DeleteModel(name='ServiceBeat'),
                migrations.DeleteModel(name='CustomAction'),
            ],
        ),
    ]
