"""Where the repository, the test data and the browser the tests drive are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CHELSEA = DATA / "chelsea.png"  # 451 x 300, CC0 (see tests/data/README.md)


def chromium_path() -> str | None:
    """Debian's chromium (`apt-get install chromium`; `make test` installs it), if present."""
    found = os.environ.get("ONEIRO_TEST_CHROMIUM") or shutil.which("chromium")
    return found if found and Path(found).exists() else None
