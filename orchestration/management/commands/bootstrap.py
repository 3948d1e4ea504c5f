"""`manage.py bootstrap`: on first run, an admin login, a `default` queue, API keys and a running Local
autoscaler serving the queue `autoscaled` (docs/autoscalers.md)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser

from accounts.actor import SYSTEM
from accounts.models import Role
from accounts.services import admin_user_ensure, apikey_create
from autoscalers.services import local_autoscaler_ensure
from queues.models import Queue
from queues.services import queue_create


class Command(BaseCommand):
    help = "First-run set-up; later runs print what exists. Writes var/bootstrap.json (mode 600)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **opts: Any) -> None:
        state_file = Path(settings.VAR_DIR) / "bootstrap.json"
        if state_file.exists() and User.objects.filter(username=opts["username"]).exists():
            state = json.loads(state_file.read_text())
        else:
            password = secrets.token_urlsafe(12)
            user = admin_user_ensure(username=opts["username"], password=password)
            if not Queue.objects.filter(name__iexact="default").exists():
                queue_create(actor=SYSTEM, name="default", system_tags=["default"])
            local_autoscaler_ensure(owner=user)
            user_key = apikey_create(actor=SYSTEM, user=user, name="make run (CLI)", role=Role.ADMIN)
            agent_key = apikey_create(actor=SYSTEM, user=user, name="make run (local agent)", role=Role.AGENT)
            state = {
                "username": user.username,
                "password": password,
                "api_key": user_key.token,
                "agent_key": agent_key.token,
            }
            state_file.parent.mkdir(parents=True, exist_ok=True)
            # Created 600, never readable by others even for a moment (it holds the admin's password and keys).
            fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(state, indent=2))
        state_file.chmod(0o600)  # also one an older version left readable
        self.stdout.write(json.dumps(state))
