"""Settings come from the environment, with derived defaults and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import SettingsError, load_settings


def test_defaults_derive_from_the_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ONEIRO_STORAGE_URL", raising=False)
    monkeypatch.setenv("ONEIRO_DATA_DIR", "/srv/oneiro")

    settings = load_settings()

    assert settings.data_dir == Path("/srv/oneiro")
    assert settings.database_url == "sqlite:////srv/oneiro/oneiro.db"
    assert settings.storage_url == "/srv/oneiro/storage"
    assert settings.weights == "imagenet"


def test_environment_names_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://db/oneiro")
    monkeypatch.setenv("REDIS_URL", "redis://broker:6379/1")
    monkeypatch.setenv("ONEIRO_WEIGHTS", "random")

    settings = load_settings()

    assert settings.database_url == "postgresql+psycopg://db/oneiro"
    assert settings.redis_url == "redis://broker:6379/1"
    assert settings.weights == "random"


def test_an_invalid_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEIRO_MAX_UPLOAD_BYTES", "lots")
    with pytest.raises(SettingsError, match="ONEIRO_MAX_UPLOAD_BYTES"):
        load_settings()
