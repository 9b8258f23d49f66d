"""Where the `oneiro` commands find the API and their key: flags, else ONEIRO_URL /
ONEIRO_API_KEY, else the file `make run` saves (ONEIRO_CLIENT_CONFIG).

Kept apart from shared.tenants so the client starts without importing SQLAlchemy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientConfig:
    """Where the API is and the key to call it with."""

    url: str
    key: str | None


def client_config_path() -> Path:
    """Where `make run` saves the local key and the CLI looks for it."""
    if "ONEIRO_CLIENT_CONFIG" in os.environ:
        return Path(os.environ["ONEIRO_CLIENT_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "oneiro" / "client.json"


def read_client_config(path: Path | None = None) -> dict[str, str]:
    """The saved server URL and key, or nothing when none is saved."""
    path = path or client_config_path()
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in loaded.items() if isinstance(v, str)} if isinstance(loaded, dict) else {}
    )


def write_client_config(url: str, key: str, path: Path | None = None) -> Path:
    """Save the server URL and key for the CLI, readable by this user only."""
    path = path or client_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "api_key": key}, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def resolve_config(url: str | None = None, key: str | None = None) -> ClientConfig:
    """URL and key from the arguments, else ONEIRO_URL / ONEIRO_API_KEY, else the file `make run`
    writes (client_config_path), each value on its own."""
    saved = read_client_config()
    return ClientConfig(
        url=(url or os.environ.get("ONEIRO_URL") or saved.get("url") or DEFAULT_URL).rstrip("/"),
        key=key or os.environ.get("ONEIRO_API_KEY") or saved.get("api_key") or None,
    )


def config_hint() -> str:
    """Where a key may come from, for messages."""
    return (
        f"pass --key, set ONEIRO_API_KEY, or run `make run` once (it saves {client_config_path()})"
    )
