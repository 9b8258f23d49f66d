"""Where the repository, the test data and the browser the tests drive are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CHELSEA = DATA / "chelsea.png"  # 451 x 300, CC0 (see tests/data/README.md)

# The offline InceptionV3 weights beside the repository (../shared/models, see its README):
# handed to CI and demos, not to a clone, so the tests that use them skip, saying so, without.
OFFLINE_WEIGHTS_NAME = "inception_v3_notop_nsfwjs.weights.h5"
OFFLINE_WEIGHTS = next(
    (
        folder / "shared" / "models" / OFFLINE_WEIGHTS_NAME
        for folder in ROOT.parents
        if (folder / "shared" / "models" / OFFLINE_WEIGHTS_NAME).is_file()
    ),
    ROOT.parent / "shared" / "models" / OFFLINE_WEIGHTS_NAME,
)


def chromium_path() -> str | None:
    """Debian's chromium (`apt-get install chromium`; `make test` installs it), if present."""
    found = os.environ.get("ONEIRO_TEST_CHROMIUM") or shutil.which("chromium")
    return found if found and Path(found).exists() else None
