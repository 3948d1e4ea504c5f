"""Experiments' own secret_env encrypted at rest, as per-user secrets already were.

Each stored value becomes a Fernet token under SECRETS_KEY (or SECRET_KEY), the key
accounts/secrets.py uses; the names stay in clear. Only rows with secrets are touched.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.fernet import Fernet
from django.conf import settings
from django.db import migrations


def _fernet() -> Fernet:
    secret = settings.SECRETS_KEY or settings.SECRET_KEY
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def encrypt(apps: Any, schema_editor: Any) -> None:
    Experiment = apps.get_model("experiments", "Experiment")
    fernet = _fernet()
    for exp in Experiment.objects.exclude(secret_env={}).only("pk", "secret_env").iterator():
        if not exp.secret_env:
            continue
        exp.secret_env = {k: fernet.encrypt(str(v).encode()).decode() for k, v in exp.secret_env.items()}
        exp.save(update_fields=["secret_env"])


def decrypt(apps: Any, schema_editor: Any) -> None:
    Experiment = apps.get_model("experiments", "Experiment")
    fernet = _fernet()
    for exp in Experiment.objects.exclude(secret_env={}).only("pk", "secret_env").iterator():
        if not exp.secret_env:
            continue
        exp.secret_env = {k: fernet.decrypt(str(v).encode()).decode() for k, v in exp.secret_env.items()}
        exp.save(update_fields=["secret_env"])


class Migration(migrations.Migration):
    dependencies = [("experiments", "0005_clearml_runtime")]
    operations = [migrations.RunPython(encrypt, decrypt)]
