"""Request bodies as JSON with a nesting limit: deep nesting is bad input (a 400), never a RecursionError.

Python's decoder recurses once per level, so 10,000 nested arrays (20 KB) raised
RecursionError and Django answered an HTML 500 before anyone logged in. Every body parser
(DRF's, the agents' report, the ClearML facade, the pages' JSON fields) goes through loads().
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    """The JSON nests deeper than allowed (a ValueError, like any other malformed JSON)."""

    def __init__(self, max_depth: int):
        super().__init__(f"the JSON nests deeper than {max_depth} levels")


def loads(raw: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """json.loads that refuses nesting deeper than `max_depth` with TooDeep."""
    # Counting brackets runs at C speed: a body with fewer of them than the limit cannot nest
    # deeper, which is every body an agent or a person sends in practice.
    text = raw.encode() if isinstance(raw, str) else raw
    brackets = text.count(b"[") + text.count(b"{")
    if brackets <= max_depth:
        return json.loads(raw, **kwargs)
    try:
        value = json.loads(raw, **kwargs)
    except RecursionError:
        raise TooDeep(max_depth) from None
    if _depth_exceeds(value, max_depth):
        raise TooDeep(max_depth)
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether a decoded value nests deeper than max_depth (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
