"""Where `make run` saves the local server URL and API key, and the CLI reads them.

Kept apart from shared.tenants so the CLI client starts without importing SQLAlchemy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


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
