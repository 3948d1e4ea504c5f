"""Template helpers for the pages: durations, sizes, sortable column headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """1d 3h, 2h 05m, 4m 10s, 12s."""
    if seconds is None:
        return "\u2013"  # an en dash
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


@register.filter
def ago(moment: datetime | None) -> str:
    """How long ago: 'just now', '12 s ago', '5 min ago', '3 h ago', '2 days ago'."""
    if moment is None:
        return "never"
    seconds = (timezone.now() - moment).total_seconds()
    if seconds < 5:
        return "just now"
    return f"{duration(seconds)} ago"


WHEN_FORMATS = {"time": "%H:%M:%S", "date": "%Y-%m-%d", "datetime": "%Y-%m-%d %H:%M:%S"}


@register.filter
def when(moment: datetime | None, style: str = "datetime") -> SafeString | str:
    """A moment as `<time>`: written in UTC with the zone named, and shown by app.js in the
    reader's zone (or UTC, their setting). Styles: time, date, datetime, and ago (how long ago,
    the exact moment in its tooltip)."""
    if moment is None:
        return "\u2013"  # an en dash
    utc = moment.astimezone(UTC)
    iso = utc.isoformat().replace("+00:00", "Z")
    exact = utc.strftime(WHEN_FORMATS["datetime"]) + " UTC"
    text = ago(moment) if style == "ago" else utc.strftime(WHEN_FORMATS.get(style, WHEN_FORMATS["datetime"])) + " UTC"
    return format_html('<time datetime="{}" data-when="{}" title="{}">{}</time>', iso, style, exact, text)


@register.filter
def mib(value: float | None) -> str:
    """Mebibytes as a human size."""
    if not value:
        return "\u2013"  # an en dash
    size = float(value)
    if size < 1024:
        return f"{size:.0f} MiB"
    size /= 1024
    if size < 1024:
        return f"{size:.1f} GiB"
    return f"{size / 1024:.1f} TiB"


@register.simple_tag
def sort_link(key: str, label: str, sort: str, descending: bool) -> SafeString:
    """A column header that sorts by `key`, toggling the direction when it already does."""
    current = key == sort
    target = f"-{key}" if current and not descending else key
    arrow = (" ▾" if descending else " ▴") if current else ""
    return format_html('<a href="?sort={}" class="{}">{}{}</a>', target, "sorted" if current else "", label, arrow)


COPY_ICON = mark_safe(
    '<svg width="13" height="13" viewBox="0 0 16 16" aria-hidden="true"><path fill="currentColor" d="M4 2h7a1 1 0 0 1 '
    "1 1v1h-1V3H4v8h1v1H4a1 1 0 0 1-1-1V3a1 1 0 0 1 1-1zm3 3h7a1 1 0 0 1 1 1v8a1 1 0 0 1-1 1H7a1 1 0 0 1-1-1V6a1 1 0 "
    '0 1 1-1zm0 1v8h7V6H7z"/></svg>'
)


@register.simple_tag
def copy_icon() -> SafeString:
    return COPY_ICON


@register.filter
def get(mapping: Any, key: str) -> Any:
    """mapping[key], or "" (a form's values and errors by field name)."""
    if isinstance(mapping, dict):
        value = mapping.get(key, "")
        return "" if value is None else value
    return ""
