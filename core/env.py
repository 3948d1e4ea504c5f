"""Typed readers for settings from the environment that fail loudly on bad values."""

from __future__ import annotations

import os


class SettingError(ValueError):
    """A setting in the environment has a value that cannot be used."""


def envstr(name: str, default: str = "") -> str:
    """A string setting; empty means the default."""
    return os.environ.get(name, "") or default


def envbool(name: str, default: bool) -> bool:
    """A boolean setting: true/false, yes/no, on/off, 1/0."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{name}={raw!r} is not a boolean (use true or false)")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    """An integer setting, optionally bounded below."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingError(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}={value} is below the minimum of {minimum}")
    return value


def envfloat(name: str, default: float) -> float:
    """A float setting."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingError(f"{name}={raw!r} is not a number") from exc


def envlist(name: str, default: list[str]) -> list[str]:
    """A comma-separated list setting."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return [part.strip() for part in raw.split(",") if part.strip()]


def secret_key_problem(value: str, development: str, *, name: str) -> None:
    """Refuse a key that anyone could know or guess: the development key, a short or repetitive one."""
    how = (
        f"make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(50))' and set {name} "
        "in the environment (see .env.example), or set DEBUG=true for development"
    )
    if value == development or value.startswith(("dev-insecure", "django-insecure")):
        raise SettingError(f"{name} is the development key, which must not be used with DEBUG off: {how}")
    if len(value) < 50 or len(set(value)) < 5:
        raise SettingError(f"{name} is too short or repetitive ({len(value)} characters, at least 50): {how}")


def proxy_ssl_header(raw: str) -> tuple[str, str]:
    """SECURE_PROXY_SSL_HEADER from "HTTP_X_FORWARDED_PROTO,https"."""
    header, _, value = raw.partition(",")
    if not header.strip().startswith("HTTP_") or not value.strip():
        raise SettingError(f"SECURE_PROXY_SSL_HEADER={raw!r} is not 'HTTP_<HEADER>,<value>' (or 'none')")
    return header.strip(), value.strip()
