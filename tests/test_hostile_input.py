"""Odd and hostile images: every mode converts to upright RGB; limits answer with their numbers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import create_app
from shared.images import decode_rgb
from shared.models import Job
from shared.settings import Settings
from tests.test_api import assert_problem, stored_files, submit
from tests.utils import authed_client


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(mode: str = "RGB", size: tuple[int, int] = (60, 40)) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert(mode)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: to be turned 90 degrees clockwise for display
    return encoded(gradient(size=(60, 40)), "JPEG", exif=exif)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    return encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def sixteen_bit_png() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 60, dtype=np.uint16), (40, 1))
    return encoded(Image.fromarray(ramp), "PNG")  # uint16 -> mode I;16


CASES = {
    "cmyk-jpeg": (encoded(gradient("CMYK"), "JPEG"), (60, 40)),
    "greyscale-png": (encoded(gradient("L"), "PNG"), (60, 40)),
    "palette-png": (encoded(gradient("P"), "PNG"), (60, 40)),
    "alpha-png": (encoded(gradient("RGBA"), "PNG"), (60, 40)),
    "16-bit-png": (sixteen_bit_png(), (60, 40)),
    "animated-webp": (animated_webp(), (40, 30)),
    "exif-rotated-jpeg": (rotated_jpeg(), (40, 60)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_image_mode_becomes_upright_rgb(client: FlaskClient, name: str) -> None:
    data, (width, height) = CASES[name]

    response = submit(client, data)
    pixels = decode_rgb(data)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["input"] == {"width": width, "height": height}
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8


def test_sixteen_bit_greyscale_keeps_its_range() -> None:
    pixels = decode_rgb(sixteen_bit_png())
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255  # not clipped to white
    assert 100 < pixels[0, 30, 0] < 155


def test_an_animation_gives_its_first_frame() -> None:
    assert tuple(decode_rgb(animated_webp())[0, 0]) == (255, 0, 0)


@pytest.fixture
def tight(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update={"max_pixels": 1000, "max_work": 50_000}))
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_too_many_pixels_is_413_with_limit_and_value(
    tight: Flask, session: Session, settings: Settings
) -> None:
    body = assert_problem(
        submit(authed_client(tight), encoded(gradient(size=(50, 40)), "PNG")), 413
    )
    assert "2000 pixels" in body["detail"] and "1000" in body["detail"]
    assert body["limit"] == 1000
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


def test_a_decompression_bomb_is_refused_before_decoding(client: FlaskClient) -> None:
    # A tiny file that declares 40000 x 40000 pixels: refused from its header alone.
    bomb = encoded(Image.new("1", (40000, 40000)), "PNG")
    assert len(bomb) < 300_000
    body = assert_problem(submit(client, bomb), 413)
    assert "1600000000" in body["detail"] or "too many pixels" in body["detail"]


def test_a_job_over_the_work_budget_is_422_with_limit_and_value(
    tight: Flask, session: Session
) -> None:
    image = encoded(gradient(size=(30, 30)), "PNG")  # 900 pixels
    body = assert_problem(submit(authed_client(tight), image, {"steps": 20, "octaves": 5}), 422)
    assert "90000 pixel-steps" in body["detail"] and "50000" in body["detail"]
    assert submit(authed_client(tight), image, {"steps": 10, "octaves": 5}).status_code == 202
