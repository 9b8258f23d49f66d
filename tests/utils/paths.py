"""Where the repository and the test data are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CHELSEA = DATA / "chelsea.png"  # 451 x 300, CC0 (see tests/data/README.md)
