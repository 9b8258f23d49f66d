"""Weights per backbone: GET /v1/models lists what this deployment can render, a job naming a
backbone without weights is refused at submit, and a worker's weights error is short."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from api import create_app
from shared.catalogue import BACKBONES
from shared.download_failures import forget_download_failure, record_download_failure
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from shared.weights import how_to_provide, renderable_backbones, weights_source
from tests.utils import ROOT, assert_problem, authed_client, image_bytes, make_job
from worker.jobs import run_job
from worker.runtime import Runtime

INCEPTION_FILE = BACKBONES["inception_v3"].weights_file
VGG_FILE = BACKBONES["vgg19"].weights_file


@pytest.fixture(autouse=True)
def empty_keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the weights this machine's Keras cache may hold."""
    cache = tmp_path / "keras"
    (cache / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(cache))
    return cache / "models"


def offline(settings: Settings, weights_dir: Path, *files: str, **more: object) -> Settings:
    """Settings of a deployment without internet whose weights directory holds `files`."""
    weights_dir.mkdir(exist_ok=True)
    for name in files:
        (weights_dir / name).write_bytes(b"not really weights")
    return settings.model_copy(
        update={
            "weights": "imagenet",
            "weights_download": False,
            "weights_dir": weights_dir,
            **more,
        }
    )


@pytest.fixture
def app_for() -> Iterator[Callable[[Settings], Flask]]:
    """Make apps of other settings; each is closed after the test."""
    made: list[Flask] = []

    def make(settings: Settings) -> Flask:
        app = create_app(settings)
        app.testing = True
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()


def submit(app: Flask, params: dict[str, object]) -> TestResponse:
    return authed_client(app).post(
        "/v1/jobs",
        data={
            "image": (io.BytesIO(image_bytes()), "a.png"),
            "params": json.dumps(params),
        },
    )


def test_models_lists_the_backbones_with_weights_and_their_layers(
    settings: Settings, tmp_path: Path, app_for: Callable[[Settings], Flask]
) -> None:
    app = app_for(offline(settings, tmp_path / "weights", INCEPTION_FILE))
    response = authed_client(app).get("/v1/models")
    assert response.status_code == 200
    [model] = response.get_json()["models"]
    assert model["name"] == "inception_v3" and model["default"] is True
    assert model["default_layers"] == ["mixed3", "mixed5"]
    assert {"name": "mixed4", "channels": 768} in model["layers"]
    assert len(model["layers"]) == len(BACKBONES["inception_v3"].layers)
    # Every backbone with random weights, or while the ImageNet weights may be downloaded.
    for everything in (
        settings.model_copy(update={"weights": "random"}),
        settings.model_copy(update={"weights": "imagenet", "weights_download": True}),
    ):
        names = [
            m["name"] for m in authed_client(app_for(everything)).get("/v1/models").json["models"]
        ]
        assert names == list(BACKBONES)


def test_models_needs_a_key_and_is_in_the_document(app: Flask) -> None:
    assert_problem(app.test_client().get("/v1/models"), 401)
    document = app.test_client().get("/v1/openapi.json").get_json()
    ok = document["paths"]["/v1/models"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/ModelList")
    schemas = document["components"]["schemas"]
    model_ref = schemas["ModelList"]["properties"]["models"]["items"]["$ref"]
    model = schemas[model_ref.rsplit("/", 1)[1]]
    assert set(model["required"]) == {"name", "default", "default_layers", "layers", "weights"}


def test_a_backbone_without_weights_is_refused_at_submit(
    settings: Settings, session: Session, tmp_path: Path, app_for: Callable[[Settings], Flask]
) -> None:
    app = app_for(offline(settings, tmp_path / "weights", INCEPTION_FILE))
    body = assert_problem(submit(app, {"model": "vgg19", "steps": 2}), 422)
    [error] = body["errors"]
    assert error["field"] == "params.model"
    assert "no weights for vgg19" in error["message"] and "inception_v3" in error["message"]
    assert VGG_FILE in error["message"] and "ONEIRO_WEIGHTS=random" in error["message"]
    assert session.query(Job).count() == 0
    response = submit(app, {"model": "inception_v3", "steps": 2})
    assert response.status_code == 202, response.get_data(as_text=True)


def test_a_deployment_with_no_weights_at_all_refuses_the_default_model_naming_the_fix(
    settings: Settings,
    session: Session,
    tmp_path: Path,
    app_for: Callable[[Settings], Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A plain offline `make run` with ONEIRO_WEIGHTS=imagenet and nothing anywhere (not even
    # in this machine's own Keras cache): refused at submit, not failed by a worker later.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    app = app_for(offline(settings, tmp_path / "weights"))
    body = assert_problem(submit(app, {"steps": 2}), 422)
    [error] = body["errors"]
    assert f"ONEIRO_WEIGHTS=/path/to/{INCEPTION_FILE}" in error["message"]
    assert session.query(Job).count() == 0
    assert authed_client(app).get("/v1/models").get_json()["models"] == []


def test_one_weights_file_is_the_default_backbones_or_the_one_it_is_named_for(
    settings: Settings, tmp_path: Path
) -> None:
    mine = tmp_path / "my_inception.h5"
    assert renderable_backbones(settings.model_copy(update={"weights": str(mine)})) == [
        "inception_v3"
    ]
    named = tmp_path / VGG_FILE
    one = settings.model_copy(update={"weights": str(named)})
    assert renderable_backbones(one) == ["vgg19"]
    assert weights_source(one, "vgg19") == str(named)
    # A weights directory adds the backbones it holds.
    both = offline(settings, tmp_path / "weights", VGG_FILE, weights=str(mine))
    assert renderable_backbones(both) == ["inception_v3", "vgg19"]


def test_a_bad_weights_file_fails_the_job_in_two_sentences(
    settings: Settings,
    runtime: Runtime,
    session: Session,
    storage: Storage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The issue's case: a file that is not VGG19's weights, offered for vgg19.
    deployment = offline(settings, tmp_path / "weights", VGG_FILE)
    runtime = dataclasses.replace(runtime, settings=deployment)
    job = make_job(session, storage, params={"model": "vgg19", "steps": 1, "octaves": 1})

    assert run_job(job.id, runtime) == JobStatus.FAILED

    session.expire_all()
    error = session.get_one(Job, job.id).error or ""
    assert "\n" not in error and len(error) < 400
    assert error.startswith(f"{tmp_path / 'weights' / VGG_FILE} does not hold VGG19 weights")
    assert "ONEIRO_WEIGHTS=random" in error
    # The library's own words go to the log.
    assert any(record.exc_info for record in caplog.records if "failed" in record.getMessage())


def test_the_offline_weights_advice_names_the_files_the_manual_names() -> None:
    manual = (ROOT / "docs" / "operations" / "weights.md").read_text()
    for backbone in BACKBONES.values():
        advice = how_to_provide(backbone)
        assert backbone.weights_file in advice and backbone.weights_file in manual
        assert "ONEIRO_WEIGHTS=random" in advice and "ONEIRO_WEIGHTS_DIR" in manual
        # The fix that works offline with one file, spelt as it is typed.
        assert f"ONEIRO_WEIGHTS=/path/to/{backbone.weights_file}" in advice


def test_a_failed_download_is_said_at_submit_until_it_is_old(
    settings: Settings, app_for: Callable[[Settings], Flask]
) -> None:
    # Downloads on, nothing cached: the API cannot know the network is down until a worker's
    # download fails. Then it says so at submit, naming the fix that works offline.
    online = settings.model_copy(
        update={"weights": "imagenet", "weights_download": True, "weights_dir": None}
    )
    app = app_for(online)
    before = submit(app, {"steps": 1})
    listed_before = authed_client(app).get("/v1/models").get_json()["models"]
    record_download_failure(online, "inception_v3", "URLError")
    try:
        refused = submit(app, {"steps": 1})
        listed = authed_client(app).get("/v1/models").get_json()["models"]
    finally:
        forget_download_failure(online, "inception_v3")
    again = submit(app, {"steps": 1})

    assert before.status_code == 202 and again.status_code == 202
    assert "inception_v3" in [model["name"] for model in listed_before]
    body = assert_problem(refused, 422)
    assert f"ONEIRO_WEIGHTS=/path/to/{INCEPTION_FILE}" in body["detail"]
    assert "could not download" in body["detail"] and "URLError" in body["detail"]
    assert "inception_v3" not in [model["name"] for model in listed]
