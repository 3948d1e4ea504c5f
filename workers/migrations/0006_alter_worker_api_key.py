"""Worker.api_key points at accounts.ApiKey, where the model moved (the column and its rows stay)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('workers', '0005_clearml_runtime'),
    ]

    operations = [
        # The table was renamed, not replaced: the foreign key already points at it.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='worker',
                    name='api_key',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='workers', to='accounts.apikey'),
                ),
            ],
        ),
    ]
