"""`manage.py apikey create|list|revoke`: make and revoke API keys from the shell."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.actor import SYSTEM
from accounts.models import ApiKey, KeyScope, Role
from accounts.services import apikey_create, apikey_revoke
from core.errors import ServiceError


class Command(BaseCommand):
    help = "Make, list and revoke API keys. The secret is printed once."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        create = sub.add_parser("create", help="make a key")
        create.add_argument("--user", required=True)
        create.add_argument("--role", choices=Role.values, default=Role.USER)
        create.add_argument("--scope", choices=KeyScope.values, default=KeyScope.WRITE)
        create.add_argument("--name", default="")
        create.add_argument("--expires-in-days", type=int)
        create.add_argument("--queue", action="append", default=[], help="agent keys: a queue it may serve")
        create.add_argument("--worker-prefix", default="")
        create.add_argument("--json", action="store_true")
        listing = sub.add_parser("list", help="list keys")
        listing.add_argument("--user")
        revoke = sub.add_parser("revoke", help="revoke a key")
        revoke.add_argument("access_key")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            getattr(self, f"_{opts['verb']}")(opts)
        except ServiceError as exc:
            raise CommandError(exc.message) from exc

    def _create(self, opts: dict[str, Any]) -> None:
        user = User.objects.filter(username=opts["user"]).first()
        if user is None:
            raise CommandError(f"no user {opts['user']!r}")
        new = apikey_create(
            actor=SYSTEM,
            user=user,
            name=opts["name"],
            role=opts["role"],
            scope=opts["scope"],
            expires_in_days=opts["expires_in_days"],
            allowed_queue_ids=opts["queue"],
            worker_prefix=opts["worker_prefix"],
        )
        if opts["json"]:
            self.stdout.write(json.dumps({"access_key": new.key.access_key, "secret": new.secret, "token": new.token}))
        else:
            self.stdout.write(f"API key (shown once): {new.token}")

    def _list(self, opts: dict[str, Any]) -> None:
        qs = ApiKey.objects.select_related("user")
        if opts["user"]:
            qs = qs.filter(user__username=opts["user"])
        for key in qs:
            state = "revoked" if key.revoked_at else "active"
            self.stdout.write(
                f"{key.access_key}  {key.user.username:<20} {key.role:<6} {key.scope:<6} {state}  {key.name}"
            )

    def _revoke(self, opts: dict[str, Any]) -> None:
        apikey_revoke(actor=SYSTEM, access_key=opts["access_key"])
        self.stdout.write(f"revoked {opts['access_key']}")
