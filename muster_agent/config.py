"""Where the server is and which key to use: environment, then a key file, then `muster login`'s file.

The key never comes from argv (it would show in `ps` and shell history).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """The configuration is missing or unusable; the message says what to do."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(os.environ.get("MUSTER_CONFIG") or Path(base) / "muster" / "config.json")


@dataclass
class Config:
    server: str
    key: str
    ca_bundle: str | None = None


def read_key_file(path: str) -> str:
    p = Path(path)
    try:
        text = p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the key file {path}: {e.strerror}") from None
    if not text:
        raise ConfigError(f"the key file {path} is empty")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Like ssh: a key others can read is refused, loudly.
        raise ConfigError(f"the key file {path} is readable by others; chmod 600 it")
    return text


def saved() -> dict[str, str]:
    p = config_path()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {p}: {e}") from None
    return {k: str(v) for k, v in data.items() if isinstance(v, (str, int))}


def save(server: str, key: str, ca_bundle: str | None = None) -> Path:
    p = config_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": server, "key": key}
    if ca_bundle:
        data["ca_bundle"] = ca_bundle
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    tmp.replace(p)
    return p


def load(*, server: str | None = None, key_file: str | None = None, ca_bundle: str | None = None) -> Config:
    """Resolve the server, key and CA bundle: flags, then MUSTER_* variables, then the saved login."""
    stored = saved()
    url = server or os.environ.get("MUSTER_SERVER") or stored.get("server")
    if not url:
        raise ConfigError("no server: pass --server URL, set MUSTER_SERVER, or run `muster login`")
    key_file = key_file or os.environ.get("MUSTER_API_KEY_FILE")
    key = read_key_file(key_file) if key_file else os.environ.get("MUSTER_API_KEY") or stored.get("key")
    if not key:
        raise ConfigError("no API key: set MUSTER_API_KEY or MUSTER_API_KEY_FILE, or run `muster login`")
    ca = ca_bundle or os.environ.get("MUSTER_CA_BUNDLE") or stored.get("ca_bundle") or None
    if ca and not Path(ca).is_file():
        raise ConfigError(f"the CA bundle {ca} does not exist")
    return Config(server=url.rstrip("/"), key=key.strip(), ca_bundle=ca)
