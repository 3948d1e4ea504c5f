"""Identifiers that several apps give their rows."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A 32-hex id, which also fits ClearML's wire format."""
    return uuid.uuid4().hex
