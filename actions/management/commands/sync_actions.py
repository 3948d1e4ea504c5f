"""`manage.py sync_actions [FILE]`: create or update custom context-menu actions from a JSON or TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.actor import SYSTEM
from actions.services import actions_sync
from core.errors import ServiceError


class Command(BaseCommand):
    help = "Sync custom actions by name from FILE (default: CUSTOM_ACTIONS_FILE); the file wins for its names."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        name = opts["file"] or settings.CUSTOM_ACTIONS_FILE
        if not name:
            self.stdout.write("no CUSTOM_ACTIONS_FILE set; nothing to sync")
            return
        path = Path(name)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            counts = actions_sync(actor=SYSTEM, path=path)
        except (ServiceError, ValueError) as e:
            raise CommandError(f"{path}: {e}") from None
        self.stdout.write(f"custom actions from {path}: {counts['created']} created, {counts['updated']} updated")
