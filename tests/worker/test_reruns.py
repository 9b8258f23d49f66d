"""A recipe rendered again is checked against what renders it: other weights are another look
(refused at submit where the API can tell, failed on the worker otherwise); another backend,
precision, engine or device, or params sent over the recipe's, render and say so in the result.
The API and the worker in-process on the real database (SQLite and PostgreSQL) and storage."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from api import create_app
from shared.catalogue import BACKBONES
from shared.images import decode_image, recipe_of
from shared.models import Job, JobStatus
from shared.recipes import (
    MACHINE_FACTS,
    RECIPE_VERSION,
    RecipeRefused,
    WeightsMismatch,
    check_weights,
    device_name,
    make_recipe,
    recipe_params,
    recipe_text,
    rerun_verdict,
)
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import assert_problem, authed_client, image_bytes, make_job, stored_files, submit
from worker.jobs import run_job
from worker.runtime import Runtime

LOOK = {"steps": 2, "octaves": 2, "seed": 13, "step_size": 0.05, "max_dim": 64}
SOMEONE_ELSES = "sha256:" + "0" * 64
DEPLOYED = b"the weights of this deployment"


def recipe(**facts: Any) -> dict[str, Any]:
    made = make_recipe(
        {"model": "inception_v3", "seed": 1},
        weights="random",
        backend="tensorflow",
        precision="float32",
        device="cpu",
    )
    return {**made, **facts}


# -- the comparison alone ---------------------------------------------------------------------


def test_the_same_recipe_is_a_faithful_rerun() -> None:
    verdict = rerun_verdict(recipe(), recipe())

    assert verdict == {"faithful": True, "differs": {}, "unknown": []}


def test_what_differs_and_what_is_unknown_make_a_rerun_unfaithful() -> None:
    asked = {**recipe(backend="jax", precision="bfloat16", job="j1"), "device": None}
    made = recipe(params={"model": "inception_v3", "seed": 1, "output_format": "png16"})
    made["params"]["seed"] = 2

    verdict = rerun_verdict(asked, made)

    assert verdict["of"] == "j1" and verdict["faithful"] is False
    assert verdict["differs"] == {
        "params.seed": [1, 2],
        "backend": ["jax", "tensorflow"],
        "precision": ["bfloat16", "float32"],
    }
    assert verdict["unknown"] == ["device"]


def test_another_guide_or_none_is_another_look() -> None:
    guided = make_recipe({"seed": 1}, weights="random", backend="tf", precision="f", guide=b"g")
    unguided = make_recipe({"seed": 1}, weights="random", backend="tf", precision="f")
    older = {key: value for key, value in unguided.items() if key not in ("guide", "mask")}

    verdict = rerun_verdict(guided, unguided)
    unknown = rerun_verdict(older, unguided)["unknown"]

    assert verdict["differs"] == {"guide": [guided["guide"], None]}
    assert str(guided["guide"]).startswith("sha256:") and guided["mask"] is None
    assert "guide" in unknown and "mask" in unknown


def test_another_mask_either_way_round_is_another_look() -> None:
    masks = [
        make_recipe({"seed": 1}, weights="random", backend="tf", precision="f", mask=data)
        for data in (b"one mask", b"another mask")
    ]
    for asked, made in (masks, masks[::-1]):
        assert rerun_verdict(asked, made)["differs"] == {"mask": [asked["mask"], made["mask"]]}


def test_a_param_sent_over_the_recipe_differs_whichever_is_larger() -> None:
    for asked, made in ((2, 1), (1, 2)):
        verdict = rerun_verdict(recipe(params={"seed": asked}), recipe(params={"seed": made}))
        assert verdict["differs"] == {"params.seed": [asked, made]}
    for theirs, ours in (("jax", "tensorflow"), ("tensorflow", "jax")):
        verdict = rerun_verdict(recipe(backend=theirs), recipe(backend=ours))
        assert verdict["differs"] == {"backend": [theirs, ours]}


def test_a_recipe_text_is_one_line_of_sorted_compact_json() -> None:
    # Sorted: the same recipe is the same bytes in every file, whatever order it was built in.
    assert recipe_text({"seed": 1, "params": {"b": 1, "a": [1, 2]}}) == (
        '{"params":{"a":[1,2],"b":1},"seed":1}'
    )


def test_device_name_is_cpu_or_gpu_and_its_compute_capability() -> None:
    def named(kind: str, capability: tuple[int, int] | None) -> str:
        return device_name(SimpleNamespace(kind=kind, compute_capability=capability))

    assert named("cpu", None) == "cpu"
    assert named("gpu", (8, 6)) == "gpu 8.6"
    assert named("gpu", None) == "gpu"  # capability unknown: the kind alone
    assert named("cpu", (8, 6)) == "cpu"  # only a GPU has one that counts
    assert named("tpu", (1, 0)) == "tpu"


def test_recipe_params_wants_an_object_with_params_of_a_version_it_reads() -> None:
    good = {"oneiro_recipe": RECIPE_VERSION, "params": {"seed": 1}}
    assert recipe_params(good) == {"seed": 1}
    assert recipe_params(good) is not good["params"]  # a copy: the caller may change it
    for bad in (
        "a string",
        [good],
        {"oneiro_recipe": RECIPE_VERSION},
        {"oneiro_recipe": RECIPE_VERSION, "params": [["seed", 1]]},
        {"oneiro_recipe": RECIPE_VERSION + 1, "params": {"seed": 1}},
        {"params": {"seed": 1}},
    ):
        with pytest.raises(RecipeRefused):
            recipe_params(bad)


def test_weights_never_hashed_are_unknown_not_the_same() -> None:
    verdict = rerun_verdict(recipe(weights="imagenet"), recipe(weights="sha256:ab"))

    assert verdict["faithful"] is False and verdict["unknown"] == ["weights"]


def test_only_other_known_weights_of_the_same_backbone_are_a_mismatch() -> None:
    with pytest.raises(WeightsMismatch, match="the same look needs the same weights"):
        check_weights(recipe(), "inception_v3", SOMEONE_ELSES)
    with pytest.raises(WeightsMismatch):  # and the other way round
        check_weights(recipe(weights=SOMEONE_ELSES), "inception_v3", "random")
    check_weights(recipe(), "inception_v3", "random")
    check_weights(recipe(), "vgg19", SOMEONE_ELSES)  # the model was changed: not its weights
    check_weights(recipe(backbone="vgg19"), "inception_v3", SOMEONE_ELSES)  # either way
    check_weights(recipe(weights="imagenet"), "inception_v3", SOMEONE_ELSES)


def test_a_recipe_names_every_fact_a_rerun_compares() -> None:
    assert set(MACHINE_FACTS) <= set(recipe())


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def one_weights_file(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlaskClient]:
    """A client of a deployment whose only weights are one InceptionV3 file."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-cache"))
    weights = tmp_path / BACKBONES["inception_v3"].weights_file
    weights.write_bytes(DEPLOYED)
    app: Flask = create_app(settings.model_copy(update={"weights": str(weights)}))
    yield authed_client(app)
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_a_recipe_on_other_weights_is_refused_at_submit_and_nothing_is_stored(
    one_weights_file: FlaskClient, settings: Settings
) -> None:
    response = submit(one_weights_file, image_bytes(), recipe=json.dumps(recipe()))

    body = assert_problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["recipe"]
    assert "rendered with inception_v3 weights random" in body["errors"][0]["message"]
    assert "sha256:" in body["errors"][0]["message"]
    assert stored_files(settings) == []


def test_a_recipe_of_a_backbone_no_worker_has_is_refused_at_submit(
    one_weights_file: FlaskClient, settings: Settings
) -> None:
    vgg = recipe(params={"model": "vgg19", "seed": 1}, backbone="vgg19")

    response = submit(one_weights_file, image_bytes(), recipe=json.dumps(vgg))
    models = one_weights_file.get("/v1/models").get_json()["models"]

    body = assert_problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["recipe"]
    assert "no weights for vgg19" in body["errors"][0]["message"]
    assert [model["name"] for model in models] == ["inception_v3"]
    assert models[0]["weights"] == f"sha256:{hashlib.sha256(DEPLOYED).hexdigest()}"
    assert stored_files(settings) == []


def test_a_recipe_on_the_same_weights_is_accepted(client: FlaskClient) -> None:
    response = submit(client, image_bytes(), recipe=json.dumps(recipe(backend="jax")))

    assert response.status_code == 202, response.get_data(as_text=True)


# -- the worker -------------------------------------------------------------------------------


def rendered(session: Session, runtime: Runtime, job_id: uuid.UUID | str) -> Job:
    job_id = uuid.UUID(str(job_id))
    assert run_job(job_id, runtime) is not None
    session.expire_all()
    return session.get_one(Job, job_id)


def test_a_recipe_rendered_again_on_the_same_machine_is_faithful_and_identical(
    client: FlaskClient, session: Session, storage: Storage, runtime: Runtime
) -> None:
    photo = image_bytes((64, 48))
    first = rendered(session, runtime, make_job(session, storage, image=photo, params=LOOK).id)

    response = submit(client, photo, recipe=str(first.id))
    again = rendered(session, runtime, response.get_json()["id"])

    assert again.status == JobStatus.SUCCEEDED and again.recipe is not None
    assert again.recipe["rerun"] == {
        "of": str(first.id),
        "faithful": True,
        "differs": {},
        "unknown": [],
    }
    result = storage.get(again.result_key or "")
    assert recipe_of(result) == again.recipe
    assert client.get(f"/v1/jobs/{again.id}").get_json()["recipe"] == again.recipe
    assert np.array_equal(
        decode_image(result).pixels, decode_image(storage.get(first.result_key or "")).pixels
    )


def test_a_recipe_rendered_on_another_kind_of_machine_renders_and_says_it_is_not_faithful(
    client: FlaskClient, session: Session, runtime: Runtime
) -> None:
    elsewhere = recipe(params=LOOK, backend="jax", precision="float16", device="gpu 9.0")
    elsewhere["job"] = "any"  # names no job of ours: only a recipe taken by id does

    response = submit(client, image_bytes((64, 48)), {"seed": 14}, recipe=json.dumps(elsewhere))
    job = rendered(session, runtime, response.get_json()["id"])

    assert job.status == JobStatus.SUCCEEDED and job.recipe is not None
    verdict = job.recipe["rerun"]
    assert verdict["faithful"] is False and "of" not in verdict
    assert set(verdict["differs"]) >= {"params.seed", "precision", "device"}
    assert verdict["differs"]["params.seed"] == [13, 14]
    assert verdict["differs"]["device"] == ["gpu 9.0", "cpu"]


def test_a_guided_look_rendered_again_without_its_guide_says_so(
    client: FlaskClient, session: Session, runtime: Runtime
) -> None:
    photo, guide = image_bytes((64, 48)), image_bytes((40, 40), fmt="WEBP")
    sent = submit(client, photo, LOOK, guide=(io.BytesIO(guide), "guide.webp"))
    first = rendered(session, runtime, sent.get_json()["id"])

    again = rendered(session, runtime, submit(client, photo, recipe=str(first.id)).get_json()["id"])

    assert first.recipe is not None and again.recipe is not None
    assert first.recipe["guide"] == "sha256:" + hashlib.sha256(guide).hexdigest()
    assert again.recipe["rerun"]["faithful"] is False
    assert again.recipe["rerun"]["differs"] == {"guide": [first.recipe["guide"], None]}


def test_a_worker_with_other_weights_fails_the_rerun_saying_why(
    session: Session, storage: Storage, runtime: Runtime
) -> None:
    # The API had these weights, this worker has others: only the worker can find it.
    asked = recipe(params=LOOK, weights=SOMEONE_ELSES)
    job = make_job(session, storage, params=LOOK, rerun_of=asked)

    ended = rendered(session, runtime, job.id)

    assert ended.status == JobStatus.FAILED and ended.result_key is None
    assert ended.error is not None
    assert f"rendered with inception_v3 weights {SOMEONE_ELSES}" in ended.error
    assert "the ones here are random" in ended.error


# -- every param a job can take, rendered again ------------------------------------------------

IN_A_YEAR = "2099-01-01T12:00:00Z"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"start_by": IN_A_YEAR}, id="start_by as an ISO 8601 time"),
        pytest.param({"start_by": "2099-01-01T12:00:00+02:00"}, id="start_by with an offset"),
        pytest.param(
            {"animation": {"frames": 2, "fps": 4, "zoom": 1.0, "translate": [3, -2]}},
            id="an animation with translate",
        ),
        pytest.param({"animation": {"frames": 2, "fps": 4}}, id="an animation"),
    ],
)
def test_translate_iso_start_by_and_animations_are_accepted_and_rerun_by_recipe(
    client: FlaskClient, session: Session, runtime: Runtime, extra: dict[str, Any]
) -> None:
    photo = image_bytes((64, 48))
    sent = submit(client, photo, {**LOOK, **extra})
    assert sent.status_code == 202, sent.get_data(as_text=True)
    first = rendered(session, runtime, sent.get_json()["id"])
    assert first.status == JobStatus.SUCCEEDED, first.error
    if "animation" in extra:
        assert first.params["animation"]["translate"] == extra["animation"].get("translate", [0, 0])
    else:
        assert first.params["start_by"].startswith(("2099-01-01T12:00:00", "2099-01-01T10:00:00"))

    again_sent = submit(client, photo, recipe=str(first.id))
    assert again_sent.status_code == 202, again_sent.get_data(as_text=True)
    again = rendered(session, runtime, again_sent.get_json()["id"])

    assert again.status == JobStatus.SUCCEEDED, again.error
    assert again.recipe is not None and again.recipe["rerun"]["faithful"] is True
    assert again.params.get("animation") == first.params.get("animation")


def test_a_recipe_whose_start_by_has_passed_renders_again_without_it(
    client: FlaskClient, session: Session, storage: Storage, runtime: Runtime
) -> None:
    # The deadline was the first job's queueing, not its look: a re-run months later keeps
    # the look and is not refused for a time long gone.
    asked = recipe(params={**LOOK, "start_by": "2020-01-01T00:00:00Z", "priority": "low"})

    response = submit(client, image_bytes((64, 48)), recipe=json.dumps(asked))

    assert response.status_code == 202, response.get_data(as_text=True)
    shown = response.get_json()["params"]
    assert shown["start_by"] is None and shown["priority"] == "normal"
