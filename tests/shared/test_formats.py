"""Formats in and out, recipes in every output, presets: decoding and encoding alone, the worker
in-process, the API's answers and refusals."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from flask.testing import FlaskClient
from PIL import Image, ImageCms, ImageOps
from sqlalchemy.orm import Session, sessionmaker

from client.cli import main
from shared.formats import ANIMATED_FORMATS, MP4, OUTPUT_FORMATS, output_format, result_format
from shared.images import (
    as_depth,
    decode_image,
    encode_image,
    fit_within,
    frame_durations,
    inspect_image,
    recipe_of,
)
from shared.models import Job, JobStatus
from shared.presets import PRESETS
from shared.settings import Settings
from shared.storage import Storage
from shared.tenants import create_key
from tests.utils import CHELSEA, ROOT, image_bytes, make_job, tenant_named
from worker.jobs import run_job
from worker.runtime import Runtime

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def ramp16(height: int = 40, width: int = 60) -> np.ndarray:
    """A 16-bit RGB image with far more than 256 levels per channel."""
    rng = np.random.default_rng(3)
    x = np.linspace(0, 65535, width)[None, :]
    y = np.linspace(0, 65535, height)[:, None]
    noise = rng.integers(0, 300, (height, width))
    channels = [x + 0 * y, y + 0 * x, (x + y) / 2]
    return np.stack([np.clip(c + noise, 0, 65535) for c in channels], axis=-1).astype(np.uint16)


def tiff(pixels: np.ndarray, **options: Any) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **options)
    return buffer.getvalue()


def planar_tiff(pixels: np.ndarray, **options: Any) -> bytes:
    """`pixels` (H x W x 3) as a TIFF whose colour planes are stored apart, each whole."""
    data = tiff(np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate", **options)
    with tifffile.TiffFile(io.BytesIO(data)) as written:
        assert written.pages.first.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    return data


def pillow(pixels: np.ndarray, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def levels(pixels: np.ndarray) -> list[int]:
    return [len(np.unique(pixels[..., c])) for c in range(3)]


# -- decoding ---------------------------------------------------------------------------------

SIXTEEN = ramp16()
EIGHT = as_depth(SIXTEEN, 8)
INPUTS = {
    "png8": (pillow(EIGHT, "PNG"), EIGHT),
    "png16": (encode_image(SIXTEEN, OUTPUT_FORMATS["png16"]), SIXTEEN),
    "webp-lossless": (pillow(EIGHT, "WEBP", lossless=True), EIGHT),
    "tiff8": (tiff(EIGHT, photometric="rgb"), EIGHT),
    "tiff8-lzw": (tiff(EIGHT, photometric="rgb", compression="lzw"), EIGHT),
    "tiff16": (tiff(SIXTEEN, photometric="rgb"), SIXTEEN),
    "tiff16-lzw": (tiff(SIXTEEN, photometric="rgb", compression="lzw"), SIXTEEN),
    "tiff16-deflate": (tiff(SIXTEEN, photometric="rgb", compression="zlib"), SIXTEEN),
    "tiff16-multipage": (tiff(np.stack([SIXTEEN, SIXTEEN[::-1]]), photometric="rgb"), SIXTEEN),
    "tiff16-tiled": (tiff(SIXTEEN, photometric="rgb", tile=(16, 16)), SIXTEEN),
    "tiff16-big-endian": (tiff(SIXTEEN, photometric="rgb", byteorder=">"), SIXTEEN),
    "tiff16-lzw-predictor": (
        tiff(SIXTEEN, photometric="rgb", compression="lzw", predictor=True),
        SIXTEEN,
    ),
    # Colour planes stored apart (PlanarConfiguration 2), as some scanners and editors write.
    "tiff8-planar": (planar_tiff(EIGHT), EIGHT),
    "tiff16-planar": (planar_tiff(SIXTEEN), SIXTEEN),
    "tiff16-planar-lzw": (planar_tiff(SIXTEEN, compression="lzw"), SIXTEEN),
    "tiff16-planar-deflate": (planar_tiff(SIXTEEN, compression="zlib"), SIXTEEN),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_every_input_decodes_exactly_at_its_own_depth(name: str) -> None:
    data, expected = INPUTS[name]

    decoded = decode_image(data)

    assert decoded.pixels.dtype == expected.dtype
    assert np.array_equal(decoded.pixels, expected)


def test_eight_bits_widen_to_the_whole_sixteen_bit_range_and_back() -> None:
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    wide = as_depth(every, 16)
    # White stays white (65535, not 65280), black black, each level evenly spaced (x 257).
    assert wide.dtype == np.uint16 and wide.max() == 65535 and wide.min() == 0
    assert np.array_equal(wide, every.astype(np.uint16) * 257)
    assert np.array_equal(as_depth(wide, 8), every)
    assert as_depth(every, 8) is every and as_depth(wide, 16) is wide
    # Sixteen to eight rounds to the nearest level.
    assert as_depth(np.array([128, 129, 65406, 65407], np.uint16), 8).tolist() == [0, 1, 254, 255]


def test_each_kind_of_job_gets_its_result_format() -> None:
    assert output_format(None) is OUTPUT_FORMATS["png"]  # jobs from before formats
    assert result_format("image", None) is OUTPUT_FORMATS["png"]
    assert result_format("image", "tiff16") is OUTPUT_FORMATS["tiff16"]
    # A short animation as a looping GIF or WebP; any other animation, and every video, an MP4.
    assert result_format("animation", "gif") is ANIMATED_FORMATS["gif"]
    assert result_format("animation", "webp") is ANIMATED_FORMATS["webp"]
    assert result_format("animation", None) is MP4
    assert result_format("animation", "png") is MP4
    assert result_format("video", "gif") is MP4


def test_a_jpeg_decodes_to_eight_bits_close_to_its_pixels() -> None:
    decoded = decode_image(pillow(EIGHT, "JPEG", quality=95))

    assert decoded.pixels.dtype == np.uint8
    assert np.abs(decoded.pixels.astype(int) - EIGHT).mean() < 3


def test_exif_orientation_turns_sixteen_bit_pixels_upright() -> None:
    # Orientation 6: the camera was turned a quarter clockwise; upright is a quarter turn back.
    data = tiff(SIXTEEN, photometric="rgb", extratags=[(274, "H", 1, 6, True)])

    pixels = decode_image(data).pixels

    assert pixels.shape == (60, 40, 3)
    assert np.array_equal(pixels, np.rot90(SIXTEEN, -1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_pixels_upright_as_pillow_turns_them(orientation: int) -> None:
    """Each of EXIF's eight orientations, on a 16-bit TIFF (turned by shared.images.orient) and
    on an 8-bit PNG (turned by Pillow): the same upright picture, of the size inspect_image
    reports. An asymmetric picture, so every flip and turn shows."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    eight = pillow(EIGHT, "PNG", exif=exif)
    with Image.open(io.BytesIO(eight)) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    sixteen = tiff(SIXTEEN, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])

    assert np.array_equal(decode_image(eight).pixels, upright)
    assert np.array_equal(as_depth(decode_image(sixteen).pixels, 8), upright)
    height, width = upright.shape[:2]
    assert (height, width) == ((60, 40) if orientation >= 5 else (40, 60))
    assert inspect_image(eight, 10**6)[1:] == (width, height)
    assert inspect_image(sixteen, 10**6)[1:] == (width, height)


def test_sixteen_bit_grey_and_rgba_decode_whole_as_rgb() -> None:
    """A 16-bit grey TIFF (one plane) and an RGBA one: every level kept, grey made RGB, alpha
    dropped; a 16-bit grey PNG (which Pillow reads whole) keeps 0 and 65535."""
    grey = SIXTEEN[..., 0]
    decoded = decode_image(tiff(grey, photometric="minisblack")).pixels
    assert np.array_equal(decoded, np.stack([grey] * 3, -1))
    rgba = np.concatenate([SIXTEEN, SIXTEEN[..., :1]], axis=-1)
    decoded = decode_image(tiff(rgba, photometric="rgb", extrasamples=[2])).pixels
    assert np.array_equal(decoded, SIXTEEN)
    ends = grey.copy()
    ends[0, :2] = (0, 65535)
    png = io.BytesIO()
    Image.fromarray(ends).save(png, format="PNG")
    decoded = decode_image(png.getvalue()).pixels
    assert decoded.dtype == np.uint16
    assert np.array_equal(decoded, np.stack([ends] * 3, -1))
    # Eight bits in a TIFF are not sixteen.
    assert decode_image(tiff(EIGHT, photometric="rgb")).pixels.dtype == np.uint8


def test_sixteen_bits_scale_down_as_eight_do_at_their_own_depth() -> None:
    """fit_within at 16 bits: the size of the 8-bit path, each sample within one 8-bit level of
    its 8-bit resize, never scaled up, the same array when it already fits."""
    small16, small8 = fit_within(SIXTEEN, 30), fit_within(EIGHT, 30)

    assert small16.dtype == np.uint16 and small8.dtype == np.uint8
    assert small16.shape == small8.shape == (20, 30, 3)
    assert np.abs(as_depth(small16, 8).astype(int) - small8).max() <= 1
    assert int(small16.max()) > 255  # still 16-bit levels, not 8-bit ones widened
    # Lanczos rings past black and white at a hard edge: the samples are clipped to the 16-bit
    # range, as Pillow clips the 8-bit path's, not wrapped around it.
    edge = np.zeros_like(SIXTEEN)
    edge[:, 30:] = 65535
    small = fit_within(edge, 30)
    assert (int(small.min()), int(small.max())) == (0, 65535)
    assert np.abs(as_depth(small, 8).astype(int) - fit_within(as_depth(edge, 8), 30)).max() <= 1
    for fits in (60, 100, None):
        assert fit_within(SIXTEEN, fits) is SIXTEEN
        assert fit_within(EIGHT, fits) is EIGHT


def test_frame_durations_keep_every_frame_on_its_time_in_what_each_format_holds() -> None:
    """Frame n starts at n / fps, rounded to the format's tick (a GIF's 10 ms, a WebP's 1 ms)."""
    gif, webp = ANIMATED_FORMATS["gif"], ANIMATED_FORMATS["webp"]
    assert frame_durations(5, 24, gif) == [40, 40, 40, 50, 40]
    assert frame_durations(4, 30, webp) == [33, 34, 33, 33]
    assert frame_durations(3, 2.5, gif) == [400, 400, 400]
    for fmt, fps, tick in ((gif, 24, 10), (gif, 29.97, 10), (webp, 24, 1), (webp, 12.5, 1)):
        durations = frame_durations(100, fps, fmt)
        assert len(durations) == 100
        assert all(d % tick == 0 and d > 0 for d in durations)
        starts = np.cumsum(durations)
        assert np.abs(starts - np.arange(1, 101) * 1000 / fps).max() <= tick / 2


def test_the_icc_profile_of_the_input_is_read() -> None:
    assert decode_image(pillow(EIGHT, "PNG", icc_profile=SRGB)).icc_profile == SRGB
    assert decode_image(tiff(SIXTEEN, photometric="rgb", iccprofile=SRGB)).icc_profile == SRGB


# -- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OUTPUT_FORMATS))
def test_every_output_format_carries_its_recipe_and_profile(name: str, tmp_path: Path) -> None:
    fmt = OUTPUT_FORMATS[name]
    recipe = {"oneiro_recipe": 1, "params": {"seed": 7, "layers": {"mixed3": 1.0}}, "x": "<&>"}
    pixels = as_depth(SIXTEEN, fmt.bits)

    data = encode_image(pixels, fmt, recipe=json.dumps(recipe), icc_profile=SRGB)
    path = tmp_path / f"out.{fmt.extension}"
    path.write_bytes(data)
    printed = CliRunner().invoke(main, ["recipe", str(path)])

    assert recipe_of(data) == recipe
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == recipe
    decoded = decode_image(data)
    assert decoded.icc_profile == SRGB
    assert decoded.pixels.dtype == pixels.dtype
    with Image.open(io.BytesIO(data)) as opened:
        assert Image.MIME[opened.format] == fmt.media_type
    if not fmt.lossy:
        assert np.array_equal(decoded.pixels, pixels)


def test_oneiro_recipe_says_when_a_file_has_none(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    path.write_bytes(image_bytes())

    printed = CliRunner().invoke(main, ["recipe", str(path)])

    assert printed.exit_code == 1
    assert "carries no Oneiro recipe" in printed.output


# -- the worker -------------------------------------------------------------------------------


@pytest.fixture
def runtime(settings: Settings, sessions: sessionmaker[Session], storage: Storage) -> Runtime:
    return Runtime(settings=settings, sessions=sessions, storage=storage, name="test-worker")


RENDER = {"steps": 2, "octaves": 2, "seed": 11, "step_size": 0.05}


def render_job(
    session: Session, storage: Storage, runtime: Runtime, image: bytes, **params: Any
) -> Job:
    job = make_job(session, storage, image=image, params={**RENDER, **params})
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    session.expire_all()
    return session.get_one(Job, job.id)


@pytest.mark.parametrize("planes", ["contiguous", "separate"])
def test_a_sixteen_bit_tiff_dreams_into_a_sixteen_bit_tiff(
    session: Session, storage: Storage, runtime: Runtime, client: FlaskClient, planes: str
) -> None:
    if planes == "separate":
        source = planar_tiff(SIXTEEN, compression="lzw", iccprofile=SRGB)
    else:
        source = tiff(SIXTEEN, photometric="rgb", compression="lzw", iccprofile=SRGB)

    job = render_job(session, storage, runtime, source, output_format="tiff16")
    response = client.get(f"/v1/jobs/{job.id}/result")

    assert response.status_code == 200
    assert response.content_type == "image/tiff"
    assert f'filename="{job.id}.tif"' in response.headers["Content-Disposition"]
    with tifffile.TiffFile(io.BytesIO(response.data)) as result:
        page = result.pages.first
        pixels = page.asarray()
        assert page.bitspersample == 16 and pixels.shape == SIXTEEN.shape
    # More levels than 8 bits hold: made from the float dream, not from an 8-bit image.
    assert min(levels(pixels)) > 256, levels(pixels)
    assert not np.array_equal(pixels, SIXTEEN)  # it dreamed
    assert decode_image(response.data).icc_profile == SRGB
    assert recipe_of(response.data) == job.recipe


@pytest.mark.parametrize("name", ["png", "png16", "jpeg", "webp"])
def test_each_format_is_served_with_its_type_name_and_recipe(
    session: Session, storage: Storage, runtime: Runtime, client: FlaskClient, name: str
) -> None:
    fmt = OUTPUT_FORMATS[name]

    job = render_job(session, storage, runtime, image_bytes((64, 48)), output_format=name)
    response = client.get(f"/v1/jobs/{job.id}/result")
    shown = client.get(f"/v1/jobs/{job.id}").get_json()

    assert job.result_key and job.result_key.endswith(f"/result.{fmt.extension}")
    assert response.content_type == fmt.media_type
    assert f'filename="{job.id}.{fmt.extension}"' in response.headers["Content-Disposition"]
    assert decode_image(response.data).pixels.dtype == (np.uint16 if fmt.bits == 16 else np.uint8)
    recipe = recipe_of(response.data)
    assert recipe is not None and recipe == job.recipe == shown["recipe"]
    assert recipe["params"] == job.params and recipe["params"]["seed"] == RENDER["seed"]
    assert recipe["backbone"] == "inception_v3" and recipe["weights"] == "random"
    assert recipe["backend"] in ("tensorflow", "jax") and recipe["precision"] and recipe["engine"]


def test_a_sixteen_bit_output_of_an_eight_bit_input_has_all_its_levels(
    session: Session, storage: Storage, runtime: Runtime
) -> None:
    job = render_job(session, storage, runtime, pillow(EIGHT, "PNG"), output_format="png16")

    pixels = decode_image(storage.get(job.result_key or "")).pixels

    assert pixels.dtype == np.uint16
    assert min(levels(pixels)) > 256, levels(pixels)


# -- the API ----------------------------------------------------------------------------------


def submit(client: FlaskClient, image: bytes, params: Any = None, **parts: Any) -> Any:
    data: dict[str, Any] = {"image": (io.BytesIO(image), "upload"), **parts}
    if params is not None:
        data["params"] = json.dumps(params)
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def stored_files(settings: Settings) -> list[Path]:
    root = Path(settings.storage_url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def refusal(response: Any, field: str) -> str:
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    errors = response.get_json()["errors"]
    assert [error["field"] for error in errors] == [field], errors
    return str(errors[0]["message"])


@pytest.mark.parametrize("name", ["tiff16-multipage", "tiff16-planar-deflate"])
def test_a_tiff_upload_is_accepted_and_stored_as_tiff(
    client: FlaskClient, settings: Settings, name: str
) -> None:
    response = submit(client, INPUTS[name][0], {"output_format": "tiff16"})

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["input"] == {"width": 60, "height": 40}
    assert response.get_json()["params"]["output_format"] == "tiff16"
    (stored,) = stored_files(settings)
    assert stored.suffix == ".tif"


def test_unknown_formats_and_presets_are_refused_and_nothing_is_stored(
    client: FlaskClient, settings: Settings
) -> None:
    image = image_bytes()

    bmp = refusal(submit(client, image, {"output_format": "bmp"}), "params.output_format")
    # An animated format, for a still.
    gif = refusal(submit(client, image, {"output_format": "gif"}), "params.output_format")
    preset = refusal(submit(client, image, {"preset": "psychedelic"}), "params.preset")
    quality = refusal(submit(client, image, {"quality": 0}), "params.quality")

    assert "'png', 'png16', 'tiff16', 'jpeg', 'webp' or 'gif'" in bmp
    assert "for animations (params.animation) only" in gif
    assert "'subtle'" in preset and "'deep'" in preset
    assert "greater than or equal to 1" in quality
    assert stored_files(settings) == []


def test_a_corrupt_tiff_is_refused_and_nothing_is_stored(
    client: FlaskClient, settings: Settings
) -> None:
    whole = INPUTS["tiff16-lzw"][0]
    # The header and the first strips, the rest of the pixels gone.
    message = refusal(submit(client, whole[: len(whole) // 2]), "image")

    assert "not a readable image" in message or "not an image" in message
    assert stored_files(settings) == []


def test_a_preset_sets_params_and_sent_params_override_it(client: FlaskClient) -> None:
    response = submit(client, image_bytes(), {"preset": "deep", "steps": 3})

    params = response.get_json()["params"]
    assert response.status_code == 202
    assert params["preset"] == "deep" and params["steps"] == 3
    deep = PRESETS["deep"].params
    assert params["octaves"] == deep["octaves"] and params["step_size"] == deep["step_size"]
    assert list(params["layers"]) == deep["layers"]


def test_presets_are_listed_with_thumbnails_the_page_serves(client: FlaskClient) -> None:
    listed = client.get("/v1/presets").get_json()["presets"]

    names = [preset["name"] for preset in listed]
    assert names == list(PRESETS) and {"subtle", "classic", "deep"} <= set(names)
    for preset in listed:
        thumbnail = client.get(preset["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.content_type == "image/jpeg"
        with Image.open(io.BytesIO(thumbnail.data)) as opened:
            assert max(opened.size) <= 256
        thumbnail.close()


def test_presets_need_a_key(app: Any) -> None:
    response = app.test_client().get("/v1/presets")

    assert response.status_code == 401


def test_a_recipe_by_job_id_gives_its_params_under_the_ones_sent(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    earlier = make_job(session, storage, params={**RENDER, "preset": "subtle"})

    response = submit(client, image_bytes(), {"steps": 4}, recipe=str(earlier.id))

    assert response.status_code == 202, response.get_data(as_text=True)
    params = response.get_json()["params"]
    assert params == {**earlier.params, "steps": 4}


def test_a_recipe_as_json_gives_its_params(client: FlaskClient) -> None:
    recipe = {"oneiro_recipe": 1, "params": {**RENDER, "output_format": "webp", "quality": 70}}

    response = submit(client, image_bytes(), recipe=json.dumps(recipe))

    assert response.status_code == 202, response.get_data(as_text=True)
    params = response.get_json()["params"]
    assert params["seed"] == RENDER["seed"] and params["output_format"] == "webp"
    assert params["quality"] == 70


def test_a_recipe_of_another_tenant_is_as_unknown_as_none(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    create_key(session, "someone-else")
    session.commit()
    theirs = make_job(session, storage, tenant_id=tenant_named(session, "someone-else").id)
    before = stored_files(settings)

    other = refusal(submit(client, image_bytes(), recipe=str(theirs.id)), "recipe")
    missing = refusal(submit(client, image_bytes(), recipe=str(uuid.uuid4())), "recipe")

    assert other == f"there is no job {theirs.id} of this tenant to take a recipe from"
    assert "there is no job" in missing
    assert stored_files(settings) == before


@pytest.mark.parametrize(
    ("recipe", "says"),
    [
        ("not json, not an id", "neither a job id nor JSON"),
        ('{"params": "steps"}', 'with its "params"'),
        ('{"oneiro_recipe": 99, "params": {}}', "recipe version 99"),
    ],
)
def test_a_recipe_that_is_not_one_is_refused(
    client: FlaskClient, settings: Settings, recipe: str, says: str
) -> None:
    message = refusal(submit(client, image_bytes(), recipe=recipe), "recipe")

    assert says in message
    assert stored_files(settings) == []


def test_a_recipe_and_a_preset_together_are_refused(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    earlier = make_job(session, storage)

    message = refusal(
        submit(client, image_bytes(), {"preset": "deep"}, recipe=str(earlier.id)), "recipe"
    )

    assert "not both" in message


def test_chelsea_is_the_photo_of_the_thumbnails() -> None:
    # The thumbnails are chelsea.png in each look (docs/guide/presets.md): same aspect ratio.
    with (
        Image.open(CHELSEA) as photo,
        Image.open(ROOT / "api" / "static" / "presets" / "classic.jpg") as thumb,
    ):
        assert abs(photo.width / photo.height - thumb.width / thumb.height) < 0.02
