"""Odd and hostile images: every mode converts to upright RGB; limits answer with their numbers."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
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
from tests.utils import assert_problem, authed_client, stored_files, submit


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


def phone_mpo() -> bytes:
    """A JPEG with a multi-picture block, as phones write: a red photo, stored sideways, then a
    blue picture of another size (a gain map, a preview)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo, extra = Image.new("RGB", (60, 40), "red"), Image.new("RGB", (120, 90), "blue")
    return encoded(photo, "MPO", save_all=True, append_images=[extra], exif=exif)


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
    "multi-picture-jpeg": (phone_mpo(), (40, 60)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_image_mode_becomes_upright_rgb(client: FlaskClient, name: str) -> None:
    data, (width, height) = CASES[name]

    response = submit(client, data)
    pixels = decode_rgb(data)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["input"] == {"width": width, "height": height}
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8


def test_a_multi_picture_jpeg_is_stored_as_jpeg_and_renders_its_first_picture(
    client: FlaskClient, settings: Settings
) -> None:
    data = phone_mpo()
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2

    response = submit(client, data)

    assert response.status_code == 202, response.get_data(as_text=True)
    (stored,) = stored_files(settings)
    assert stored.suffix == ".jpg"
    pixels = decode_rgb(stored.read_bytes())  # what the worker renders
    assert pixels.shape == (60, 40, 3)
    assert tuple(pixels[30, 20]) == pytest.approx((254, 0, 0), abs=2)


def test_sixteen_bit_greyscale_keeps_its_range() -> None:
    pixels = decode_rgb(sixteen_bit_png())
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255  # not clipped to white
    assert 100 < pixels[0, 30, 0] < 155


def test_an_animation_gives_its_first_frame() -> None:
    assert tuple(decode_rgb(animated_webp())[0, 0]) == (255, 0, 0)


@pytest.fixture
def limited(settings: Settings) -> Iterator[Callable[..., FlaskClient]]:
    """Clients of apps with other limits: limited(max_pixels=..., max_work=...)."""
    apps: list[Flask] = []

    def client_with(**limits: Any) -> FlaskClient:
        apps.append(create_app(settings.model_copy(update=limits)))
        return authed_client(apps[-1])

    yield client_with
    for app in apps:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()


def assert_nothing_stored(session: Session, settings: Settings) -> None:
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


def test_too_many_pixels_is_413_with_limit_and_value(
    limited: Callable[..., FlaskClient], session: Session, settings: Settings
) -> None:
    client = limited(max_pixels=1000)
    body = assert_problem(submit(client, encoded(gradient(size=(50, 40)), "PNG")), 413)
    assert "2000 pixels" in body["detail"] and "1000" in body["detail"]
    assert "ONEIRO_MAX_PIXELS" in body["detail"]  # the setting, as a 422 names its own
    assert body["limit"] == 1000
    assert_nothing_stored(session, settings)


def test_a_decompression_bomb_is_refused_before_decoding(client: FlaskClient) -> None:
    # A tiny file that declares 40000 x 40000 pixels: refused from its header alone.
    bomb = encoded(Image.new("1", (40000, 40000)), "PNG")
    assert len(bomb) < 300_000
    body = assert_problem(submit(client, bomb), 413)
    assert "1600000000" in body["detail"] and "ONEIRO_MAX_PIXELS" in body["detail"]


@pytest.mark.parametrize("database_kind", ["sqlite"], indirect=True)  # no query differs
def test_a_large_photo_within_the_default_pixel_limit_is_taken_at_default_params(
    limited: Callable[..., FlaskClient], session: Session
) -> None:
    # The photo a newcomer's 6000x5232 camera file was refused at (its top octave was 1.69x a
    # side); the service's own limits, whatever the test settings lower.
    defaults = Settings()
    client = limited(max_pixels=defaults.max_pixels, max_work=defaults.max_work)
    photo = encoded(Image.new("RGB", (6000, 5232), (90, 120, 60)), "JPEG")
    answer = submit(client, photo)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    job = session.get(Job, uuid.UUID(answer.get_json()["id"]))
    assert job is not None and (job.input_width, job.input_height) == (6000, 5232)


def test_a_job_over_the_work_budget_is_422_with_limit_and_value(
    limited: Callable[..., FlaskClient], session: Session, settings: Settings
) -> None:
    client = limited(max_work=50_000)
    image = encoded(gradient(size=(100, 100)), "PNG")  # one octave: the input's 10000 pixels
    body = assert_problem(submit(client, image, {"steps": 6, "octaves": 1}), 422)
    assert body["errors"][0]["field"] == "params"
    assert "60000 pixel-steps" in body["detail"] and "50000 (ONEIRO_MAX_WORK)" in body["detail"]
    assert_nothing_stored(session, settings)
    assert submit(client, image, {"steps": 5, "octaves": 1}).status_code == 202


def test_the_work_is_charged_after_max_dim(limited: Callable[..., FlaskClient]) -> None:
    # 400 x 400 at 2 steps costs 320000 pixel-steps; downscaled to 200 x 200, 80000.
    client = limited(max_work=100_000)
    image = encoded(gradient(size=(400, 400)), "PNG")
    assert_problem(submit(client, image, {"steps": 2, "octaves": 1}), 422)
    accepted = submit(client, image, {"steps": 2, "octaves": 1, "max_dim": 200})
    assert accepted.status_code == 202, accepted.get_data(as_text=True)


def test_the_work_counts_every_octave_at_its_own_size(limited: Callable[..., FlaskClient]) -> None:
    # 5 octaves of a 100 x 100 image at 1.3: 75, 77, then 100 a side three times (octaves above
    # the input render at its size), 41554 pixels a step, not 5 x 10000: the cheap count would
    # refuse under a limit of 45000 what the engine renders within it.
    image = encoded(gradient(size=(100, 100)), "PNG")
    body = assert_problem(submit(limited(max_work=41_000), image, {"steps": 1}), 422)
    assert "41554 pixel-steps" in body["detail"]
    assert submit(limited(max_work=45_000), image, {"steps": 1}).status_code == 202


def test_the_issues_tiny_png_with_huge_octaves_is_refused_or_rendered_at_its_size(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    image = encoded(gradient(size=(256, 256)), "PNG")
    body = assert_problem(submit(client, image, {"octaves": 12, "octave_scale": 4}), 422)
    assert [e["field"] for e in body["errors"]] == ["params.octave_scale"]
    assert_nothing_stored(session, settings)
    # Within the ranges, 12 octaves at 2 once put a 300 x 300 image's top octave at 9600 a
    # side, over the pixel limit. Octaves above the input now render at its size: the job is
    # taken, and charged what it renders (five at 75, 150, then six at 300 a side).
    bigger = encoded(gradient(size=(300, 300)), "PNG")
    params = {"octaves": 12, "octave_scale": 2, "steps": 20}
    answer = submit(client, bigger, params)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    charged = answer.get_json()["estimate"]["megapixel_steps"]
    assert charged == pytest.approx((5 * 75**2 + 150**2 + 6 * 300**2) * 20 / 1e6, abs=1e-3)


def test_the_issues_thin_png_is_refused(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    thin = encoded(Image.new("RGB", (1, 65536)), "PNG")
    assert len(thin) < 1000
    body = assert_problem(submit(client, thin), 422)
    assert body["errors"][0]["field"] == "image"
    assert "aspect ratio of 65536:1" in body["detail"]
    assert "20:1 (ONEIRO_MAX_ASPECT_RATIO)" in body["detail"]
    assert_nothing_stored(session, settings)
