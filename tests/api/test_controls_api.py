"""Guide images and masks through the API: stored beside the input, refused clearly when wrong,
and rendered end to end by a real worker."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.images import decode_rgb, fit_within
from shared.models import Job
from shared.settings import Settings
from shared.storage import Storage, guide_key, mask_key
from tests.utils import CHELSEA, Stack, image_bytes, running_stack
from worker.engine.controls import mask_weights


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def half_mask(size: tuple[int, int]) -> np.ndarray:
    """Dream the left half (255), keep the right (0); `size` is (width, height)."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, : size[0] // 2] = 255
    return mask


MASK = encoded(Image.fromarray(half_mask((96, 64))))  # the shape of image_bytes()
GUIDE = image_bytes((50, 40), "JPEG")


def post(client: FlaskClient, params: dict[str, Any] | None = None, **parts: Any) -> Any:
    data: dict[str, Any] = {"image": (io.BytesIO(image_bytes()), "image.png")}
    if params is not None:
        data["params"] = json.dumps(params)
    for name, value in parts.items():
        data[name] = (io.BytesIO(value), f"{name}.bin") if isinstance(value, bytes) else value
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def stored(settings: Settings) -> list[Path]:
    root = Path(settings.storage_url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_guide_and_a_mask_are_stored_beside_the_input(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    response = post(client, {"guide_weight": 0.7}, guide=GUIDE, mask=MASK)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["params"]["guide_weight"] == 0.7
    job = session.get_one(Job, uuid.UUID(response.get_json()["id"]))
    assert job.guide_key == guide_key(job.id, "jpg") and storage.get(job.guide_key) == GUIDE
    assert job.mask_key == mask_key(job.id, "png") and storage.get(job.mask_key) == MASK


def test_a_job_without_them_has_neither(client: FlaskClient, session: Session) -> None:
    response = post(client)
    job = session.get_one(Job, uuid.UUID(response.get_json()["id"]))
    assert job.guide_key is None and job.mask_key is None


COLOUR_MASK = encoded(
    Image.fromarray(np.dstack([half_mask((96, 64))] * 2 + [np.zeros((64, 96), np.uint8)]))
)
BOMB = encoded(Image.new("1", (40000, 40000)))


@pytest.mark.parametrize(
    ("parts", "params", "status", "field", "words"),
    [
        ({"guide": b"not an image"}, None, 422, "guide", "not an image"),
        ({"guide": b""}, None, 422, "guide", "empty"),
        ({"guide": "text"}, None, 422, "guide", "file part"),
        ({"guide": BOMB}, None, 413, "guide", "ONEIRO_MAX_PIXELS"),
        ({"mask": b"GIF89a"}, None, 422, "mask", "image"),
        ({"mask": COLOUR_MASK}, None, 422, "mask", "greyscale"),
        ({"mask": encoded(Image.new("L", (64, 96)))}, None, 422, "mask", "aspect"),
        ({"mask": BOMB}, None, 413, "mask", "ONEIRO_MAX_PIXELS"),
        ({}, {"guide_weight": 0.5}, 422, "params.guide_weight", "'guide' file part"),
        ({}, {"mask_layers": "mixed2"}, 422, "params.mask_layers", "'mask' file part"),
        ({"mask": MASK}, {"mask_layers": "nope"}, 422, "params.mask_layers", "no layer"),
        ({"guide": GUIDE}, {"guide_weight": 1.5}, 422, "params.guide_weight", "less than"),
    ],
    ids=[
        "guide-not-image",
        "guide-empty",
        "guide-as-text",
        "guide-bomb",
        "mask-not-image",
        "mask-colour",
        "mask-aspect",
        "mask-bomb",
        "guide-weight-alone",
        "mask-layers-alone",
        "mask-layers-unknown",
        "guide-weight-range",
    ],
)
def test_bad_guides_and_masks_are_refused_and_store_nothing(
    client: FlaskClient,
    session: Session,
    settings: Settings,
    parts: dict[str, Any],
    params: dict[str, Any] | None,
    status: int,
    field: str,
    words: str,
) -> None:
    response = post(client, params, **parts)

    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    body = response.get_json(force=True)
    if status == 422:
        assert [e["field"] for e in body["errors"]] == [field]
    else:
        assert body["field"] == field and body["limit"] == settings.max_pixels
    assert words in body["detail"]
    assert stored(settings) == []
    assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_an_idempotent_retry_with_another_guide_is_a_different_request(
    client: FlaskClient,
) -> None:
    key = {"Idempotency-Key": "guide-1"}
    first = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(image_bytes()), "i.png"), "guide": (io.BytesIO(GUIDE), "g")},
        headers=key,
        content_type="multipart/form-data",
    )
    other = image_bytes((40, 50), "PNG")
    again = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(image_bytes()), "i.png"), "guide": (io.BytesIO(other), "g")},
        headers=key,
        content_type="multipart/form-data",
    )
    assert first.status_code == 202
    assert again.status_code == 422 and "different request" in again.get_json()["detail"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("controls"), redis_url) as running:
        yield running


@pytest.mark.e2e
def test_a_guided_masked_job_renders_through_a_real_worker(stack: Stack) -> None:
    cat = fit_within(decode_rgb(CHELSEA.read_bytes()), 128)
    height, width = cat.shape[:2]
    mask = encoded(Image.fromarray(half_mask((451, 300))))  # CHELSEA's own size
    with CHELSEA.open("rb") as image:
        response = stack.http().post(
            f"{stack.url}/v1/jobs",
            files={
                "image": ("chelsea.png", image, "image/png"),
                "guide": ("guide.jpg", GUIDE, "image/jpeg"),
                "mask": ("mask.png", mask, "image/png"),
            },
            data={"params": json.dumps({"steps": 3, "octaves": 2, "max_dim": 128, "seed": 3})},
            timeout=10,
        )
    assert response.status_code == 202, response.text

    job = stack.wait_until_ended(response.json()["id"], timeout=600)

    assert job["status"] == "succeeded", job
    result = stack.http().get(f"{stack.url}/v1/jobs/{job['id']}/result", timeout=10)
    dreamed = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB")).astype(int)
    assert dreamed.shape == (height, width, 3)
    weights = mask_weights(half_mask((451, 300)), (height, width))
    difference = np.abs(dreamed - cat)
    assert difference[weights == 0.0].max() == 0
    assert difference[weights == 1.0].mean() > 1.0
