"""Text repair at the service boundary: logs keep going whatever bytes a program printed."""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """NUL bytes and lone surrogates (invalid UTF-8 decoded with surrogateescape) become U+FFFD."""
    return _SURROGATES.sub("\ufffd", text.replace("\x00", "\ufffd"))
