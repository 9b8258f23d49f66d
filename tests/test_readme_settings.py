"""The README's Settings tables stay true to the code: every setting is listed under the name
it is read by, with its real default, and no row names a variable nothing reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.utils import ROOT

# Where the variables that are not Settings fields are read.
READERS = ("api", "worker", "shared", "client", "dev", "tests")


def readme_table() -> dict[str, str]:
    """Variable -> default cell, of every table row in the README's Settings section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", section, flags=re.MULTILINE)
    return dict(rows)


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"ONEIRO_{field.upper()}"


def test_every_setting_is_in_the_readme_table() -> None:
    table = readme_table()
    missing = [env_name(field) for field in Settings.model_fields if env_name(field) not in table]
    assert not missing, f"add to README.md's Settings table: {missing}"


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_the_readme_gives_each_settings_real_default(field: str) -> None:
    default = Settings.model_fields[field].default
    if default in ("", None):  # derived (from ONEIRO_DATA_DIR, the host name) or none
        return
    written = re.match(r"`([^`]*)`", readme_table()[env_name(field)].strip())
    assert written, f"{env_name(field)}: the default is not written as `value`"
    value = written.group(1)
    if isinstance(default, bool):
        assert value == str(default).lower()
    elif isinstance(default, int | float):
        assert float(value) == default
    else:
        assert value == str(default) or Path(value) == default


def test_every_other_variable_in_the_table_is_read_somewhere() -> None:
    settings = {env_name(field) for field in Settings.model_fields}
    code = "\n".join(
        path.read_text()
        for package in READERS
        for path in (ROOT / package).rglob("*.py")
        if path.name != Path(__file__).name
    )
    unread = [name for name in readme_table() if name not in settings and name not in code]
    assert not unread, f"README.md's Settings table names variables nothing reads: {unread}"
