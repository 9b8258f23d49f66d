"""The OpenAPI document: valid, complete, generated from the models that validate requests, and
true to the API, which a fuzzer driven by it (schemathesis, in-process) checks against a real
database: no request it can make gets a 5xx."""

from __future__ import annotations

import io
import os
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, seed, settings, strategies
from openapi_spec_validator import validate
from pydantic import BaseModel
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import create_app
from api.schemas import JobOut, Progress
from shared.models import Job, JobStatus, utcnow
from shared.params import RenderParams
from shared.serializer import job_json, webhook_job_json
from shared.settings import Settings
from shared.storage import Storage, preview_key, result_key
from shared.webhooks import WebhookSpec
from tests.utils import image_bytes, make_job, new_key

DOC_ROUTES = {"/v1/openapi.json", "/v1/docs", "/v1/docs/openapi.json", "/v1/docs/redoc/"}


def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/v1/openapi.json")  # no key: the document is public
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_document_is_valid_openapi_3(app: Flask) -> None:
    doc = document(app)
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An Oneiro API key.",
    }


def test_each_model_has_one_name_and_one_schema(app: Flask) -> None:
    # spectree named nested models Parent.Child: Job was also JobPage.JobOut, RenderParams also
    # Job.RenderParams and JobSubmission.RenderParams, and generated clients dropped every job
    # answer (issue 12).
    schemas = document(app)["components"]["schemas"]
    titles = [schema.get("title", name) for name, schema in schemas.items()]
    assert not [name for name in schemas if "." in name]
    assert sorted(titles) == sorted(set(titles))
    assert {"Job", "JobPage", "RenderParams", "Progress", "Problem", "Layer"} <= set(schemas)
    assert schemas["JobPage"]["properties"]["jobs"]["items"] == {"$ref": "#/components/schemas/Job"}


def test_the_docs_page_needs_no_key_and_reads_the_document(app: Flask) -> None:
    anonymous = app.test_client()
    page = anonymous.get("/v1/docs", follow_redirects=True)
    assert page.status_code == 200
    assert "redoc" in page.get_data(as_text=True).lower()
    assert anonymous.get("/v1/docs/openapi.json").get_json() == document(app)


def test_the_docs_page_loads_only_scripts_the_api_serves(app: Flask) -> None:
    # It loaded Redoc from unpkg.com, so the page was blank offline (issue 12).
    anonymous = app.test_client()
    page = anonymous.get("/v1/docs", follow_redirects=True).get_data(as_text=True)
    sources = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']([^\"']+)", page)
    assert sources == ["/static/redoc.standalone.js"]
    with anonymous.get(sources[0]) as bundle:
        assert bundle.status_code == 200
        assert bundle.mimetype in ("text/javascript", "application/javascript")
        assert b"Redoc" in bundle.data and len(bundle.data) > 500_000  # the bundle, not a stub
    # The web page's policy still holds for what its static folder serves, the bundle included.
    policy = bundle.headers["Content-Security-Policy"]
    with anonymous.get("/") as web_page:
        assert "default-src 'self'" in policy
        assert web_page.headers["Content-Security-Policy"] == policy
    static = Path(app.static_folder or "")
    assert "MIT License" in (static / "redoc.LICENSE").read_text()


def test_every_v1_route_is_in_the_document_behind_the_bearer_key(app: Flask) -> None:
    paths = document(app)["paths"]
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1") and rule.rule not in DOC_ROUTES
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    # The jobs' eight, estimates, models, presets, and the uploads' POST, PATCH and DELETE.
    assert len(routes) == 14
    for path, method in routes:
        operation = paths[path][method]
        assert operation["security"] == [{"bearerAuth": []}], (path, method)
        assert operation["responses"]["401"]["content"]["application/problem+json"]
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == ["application/problem+json"]


def test_job_submission_documents_the_models_that_validate_it(app: Flask) -> None:
    doc = document(app)
    operation = doc["paths"]["/v1/jobs"]["post"]
    form = resolve(doc, operation["requestBody"]["content"]["multipart/form-data"]["schema"])
    assert not form.get("required")  # an image or a video
    assert form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["video"]["format"] == "binary"
    params = resolve(doc, form["properties"]["params"])
    assert set(params["properties"]) == set(RenderParams.model_fields)
    assert params["additionalProperties"] is False
    assert params["properties"]["steps"]["maximum"] == 1000
    webhook = resolve(doc, form["properties"]["webhook"])
    assert set(webhook["properties"]) == set(WebhookSpec.model_fields)
    assert [(p["name"], p["in"]) for p in operation["parameters"]] == [
        ("Idempotency-Key", "header")
    ]
    assert set(operation["responses"]) == {
        *("200", "202", "401", "409", "413", "415", "422", "429", "503")
    }
    for status in ("200", "202"):
        assert resolve(doc, operation["responses"][status]["content"]["application/json"]["schema"])
        assert "Location" in operation["responses"][status]["headers"]
    listing = doc["paths"]["/v1/jobs"]["get"]["parameters"]
    assert {p["name"]: p["in"] for p in listing} == {
        "status": "query",
        "limit": "query",
        "cursor": "query",
    }
    files = {
        "/v1/jobs/{job_id}/result": [
            "image/png",
            "image/tiff",
            "image/jpeg",
            "image/webp",
            "image/gif",  # an animation asked for as one
            "video/mp4",
        ],
        "/v1/jobs/{job_id}/preview": ["image/jpeg"],
        "/v1/jobs/{job_id}/events": ["text/event-stream"],
    }
    for path, media in files.items():
        assert list(doc["paths"][path]["get"]["responses"]["200"]["content"]) == media


def test_the_job_schema_is_what_job_json_gives(session: Session, storage: Storage) -> None:
    job = make_job(session, storage, status=JobStatus.FAILED, error="boom")
    shown = job_json(job)
    assert set(shown) == set(JobOut.model_fields)
    # A still's progress has no frames; an animation's or a video's has them too.
    still = {name for name, field in Progress.model_fields.items() if field.is_required()}
    assert set(shown["progress"]) == still
    JobOut.model_validate(shown)
    video = make_job(session, storage, kind="video", frames=12)
    shown = job_json(video)
    assert set(shown["progress"]) == set(Progress.model_fields)
    assert (shown["kind"], shown["frames"], shown["progress"]["frames"]) == ("video", 12, 12)
    JobOut.model_validate(shown)


def test_a_webhook_carries_the_jobs_fields_as_the_api_shows_them(
    session: Session, storage: Storage
) -> None:
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, result_key="r.png")
    shown, carried = job_json(job), webhook_job_json(job)
    assert set(carried) - {"url"} <= set(JobOut.model_fields)
    assert {name: shown[name] for name in carried if name != "url"} == {
        name: value for name, value in carried.items() if name != "url"
    }
    assert carried["url"] == f"/v1/jobs/{job.id}" and carried["result_url"] is not None


def test_times_read_back_aware_in_utc(session: Session, storage: Storage) -> None:
    # One column type for every time (shared/models.py): SQLite keeps no zone, PostgreSQL
    # answers in the connection's; either way a time reads back aware, in UTC, as written.
    written = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    job = make_job(session, storage, status=JobStatus.FAILED, finished_at=written)
    session.expire_all()
    read = session.get_one(Job, job.id)
    assert read.finished_at == written and read.finished_at.tzinfo == UTC
    assert read.created_at.tzinfo == UTC
    assert job_json(read)["finished_at"] == "2026-01-02T01:04:05Z"


# The fuzzer: every operation but /events, whose stream stays open while a job is unfinished
# and the fuzz never runs a worker (its 404 for unknown ids is in test_tenants). In `make test`
# it is derandomized: the same cases every run, so a red run is a change in the code, never the
# luck of the draw. `make fuzz` draws new ones: FUZZ_SEED (a number: replay that draw) and
# FUZZ_EXAMPLES (per operation) set it.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")
PUBLIC_ADDRESS = "93.184.215.14"


@pytest.fixture
def fuzz_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The app with limits no fuzzer reaches, and webhook host names that resolve to a public
    address without asking DNS (the fuzz stays off the network; addresses are checked as ever)."""

    def resolve_offline(host: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return socket.getaddrinfo(host, *args, **{**kwargs, "flags": socket.AI_NUMERICHOST})
        except (socket.gaierror, UnicodeError, ValueError):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_ADDRESS, 0))]

    # Only shared.webhooks sees the stand-in: Redis and the databases resolve as ever.
    stand_in = SimpleNamespace(
        getaddrinfo=resolve_offline,
        gaierror=socket.gaierror,
        IPPROTO_TCP=socket.IPPROTO_TCP,
        SOCK_STREAM=socket.SOCK_STREAM,
    )
    monkeypatch.setattr("shared.webhooks.socket", stand_in)
    roomy = settings.model_copy(update={"rate_limit": "100000/minute", "max_active_jobs": 100000})
    app = create_app(roomy)
    app.config["TESTING"] = True
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


@pytest.fixture
def fuzz_key(fuzz_app: Flask) -> str:
    return new_key(fuzz_app.extensions["oneiro"].settings.database_url)


@pytest.fixture
def fuzz_jobs(fuzz_app: Flask) -> list[uuid.UUID]:
    """Jobs of the fuzz key's tenant in every state, for the routes that name a job: random ids
    only ever find nothing."""
    services = fuzz_app.extensions["oneiro"]
    with services.sessions() as session:
        jobs = [make_job(session, services.storage, status=status) for status in JobStatus]
        done = make_job(session, services.storage, status=JobStatus.SUCCEEDED, attempt=1)
        done.result_key = result_key(done.id, 1)
        services.storage.put(done.result_key, image_bytes())
        services.storage.put(preview_key(done.id, 1), image_bytes(fmt="JPEG"))
        gone = make_job(session, services.storage, status=JobStatus.SUCCEEDED, expired_at=utcnow())
        session.commit()
        return [job.id for job in (*jobs, done, gone)]


def with_job(case: Any, job_id: uuid.UUID | None) -> Any:
    """`case`, naming `job_id` instead of the generated id (when not None)."""
    if job_id is not None:
        case.path_parameters = {**case.path_parameters, "job_id": str(job_id)}
    return case


# Any JSON at all, containers often: what a client can put in a field of the params or webhook
# part, to reach the validators past the schema's types (a list of lists of layers was a 500).
ANY_JSON = strategies.recursive(
    strategies.none()
    | strategies.booleans()
    | strategies.integers()
    | strategies.floats()
    | strategies.text(max_size=6),
    lambda inner: (
        strategies.lists(inner, max_size=3)
        | strategies.dictionaries(strategies.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def any_json_in(model: type[BaseModel]) -> strategies.SearchStrategy[dict[str, Any]]:
    """Objects naming about half of `model`'s fields, each holding any JSON: every field's
    validator is run at once."""
    return strategies.fixed_dictionaries({}, optional=dict.fromkeys(model.model_fields, ANY_JSON))


def with_parts(case: Any, params: dict[str, Any], webhook: dict[str, Any] | None) -> Any:
    """`case` as a submission of a real picture with these params and webhook parts."""
    case.body = {"image": image_bytes(), "params": params}
    if webhook is not None:
        case.body["webhook"] = webhook
    return case


def with_image(case: Any, image: bytes | None) -> Any:
    """`case`, uploading `image` instead of the generated bytes (when it is a form with one)."""
    if image is not None and isinstance(case.body, dict) and "image" in case.body:
        case.body = {**case.body, "image": image}
    return case


FUZZ_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_fuzz_finds_no_server_error_and_no_undocumented_answer(
    fuzz_app: Flask, fuzz_key: str, fuzz_jobs: list[uuid.UUID]
) -> None:
    # Each operation in turn, with valid and invalid requests, through schemathesis's public
    # Python API (its lazy pytest fixture loader does not run under pytest 9).
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", fuzz_app)
    failures: dict[str, BaseException] = {}
    for result in schema.exclude(path_regex=r"/events$").get_all_operations():
        operation = result.ok()
        requests = strategies.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )
        if "{job_id}" in operation.path:
            known = strategies.sampled_from([*fuzz_jobs, None])
            requests = strategies.builds(with_job, requests, known)
        examples = FUZZ_EXAMPLES
        if operation.path == "/v1/jobs" and operation.method == "post":
            # Random bytes are never a picture: half the time send one, to get past the image.
            picture = strategies.sampled_from([image_bytes(), None])
            odd = strategies.builds(
                with_parts,
                operation.as_strategy(GenerationMode.POSITIVE),
                any_json_in(RenderParams),
                strategies.none() | any_json_in(WebhookSpec),
            )
            requests = strategies.builds(with_image, requests, picture) | odd
            examples *= 4  # the one operation with a body to speak of; odd parts cost a 422

        @given(case=requests)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,  # no replay store: a failure prints its example
            derandomize=FUZZ_SEED is None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {fuzz_key}"}, checks=FUZZ_CHECKS
            )

        if FUZZ_SEED is not None:
            fuzz = seed(int(FUZZ_SEED))(fuzz)
        try:
            fuzz()
        except Exception as exc:  # every operation fuzzed, then all failures reported together
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


# The fuzz's explicit examples: JSON that Python's own parser or a validator once turned into a
# 500 (an integer past Python's 4300 digits, nesting past its recursion limit, unhashable layers).
ODD_JSON = {
    "5000-digit integer": '{"seed": ' + "7" * 5000 + "}",
    "5000-deep arrays": "[" * 5000 + "]" * 5000,
    "5000-deep objects": '{"a": ' * 5000 + "1" + "}" * 5000,
    "layers [[null]]": '{"layers": [[null]]}',
    "layers [[]]": '{"layers": [[]]}',
    "layers [{}]": '{"layers": [{}]}',
}


@pytest.mark.parametrize("part", ["params", "webhook"])
@pytest.mark.parametrize("name", list(ODD_JSON))
def test_odd_json_in_a_part_is_a_422_naming_it(
    client: FlaskClient, session: Session, settings: Settings, part: str, name: str
) -> None:
    form = {"image": (io.BytesIO(image_bytes()), "cat.png"), part: ODD_JSON[name]}
    response = client.post("/v1/jobs", data=form, content_type="multipart/form-data")

    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    fields = [error["field"] for error in response.get_json()["errors"]]
    assert fields and all(field.split(".")[0] == part for field in fields), fields
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert not list(Path(settings.storage_url).rglob("*.*"))
