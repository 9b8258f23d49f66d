"""A job's cost from the engine's own octave schedule (shared/cost.py), and the limits on it."""

from __future__ import annotations

import pytest

from shared.catalogue import BACKBONES
from shared.cost import (
    CostRefused,
    check_limits,
    octave_sizes,
    peak_memory_bytes,
    peak_pixels,
    render_size,
    work,
)
from shared.models import Job
from shared.params import RenderParams
from shared.serializer import NO_THROUGHPUT, Throughput, render_estimate
from shared.settings import Settings, SettingsError, load_settings


def unchecked(**fields: object) -> RenderParams:
    """Params as a stored row or an older range might hold them: not validated."""
    defaults = {"model": "inception_v3", "steps": 100, "octaves": 5, "octave_scale": 1.3}
    return RenderParams.model_construct(**{**defaults, "max_dim": None, **fields})


def test_octaves_surround_the_input_smallest_first_none_above_it() -> None:
    # Octaves above the input are rendered at the input's size: a photo is dreamed at its own
    # size at most, so any photo within the pixel limit fits it at default params.
    sizes = octave_sizes(400, 300, RenderParams(octaves=5))
    assert sizes == [(237, 178), (308, 231), (400, 300), (400, 300), (400, 300)]
    assert work(400, 300, RenderParams(octaves=5, steps=10)) == 10 * sum(w * h for w, h in sizes)
    assert peak_pixels(400, 300, RenderParams(octaves=5)) == 400 * 300


@pytest.mark.parametrize("size", [(6000, 5232), (8192, 8192), (400, 300), (1, 1)])
def test_any_photo_within_the_pixel_limit_is_admitted_at_default_params(
    size: tuple[int, int],
) -> None:
    width, height = size
    settings = Settings()
    assert width * height <= settings.max_pixels
    if max(width, height) / min(width, height) <= settings.max_aspect_ratio:
        check_limits(width, height, RenderParams(), settings)
    assert peak_pixels(width, height, RenderParams()) <= max(width * height, 75 * 75)


def test_octaves_below_the_backbone_minimum_are_raised_as_the_engine_raises_them() -> None:
    # InceptionV3 sees nothing below 75 pixels; VGG19 below 32.
    assert octave_sizes(96, 64, RenderParams(octaves=2)) == [(112, 75), (112, 75)]
    assert octave_sizes(96, 64, RenderParams(octaves=2, model="vgg19")) == [(74, 49), (96, 64)]


def test_max_dim_downscales_before_the_octaves() -> None:
    assert octave_sizes(4000, 3000, RenderParams(octaves=1, max_dim=400)) == [(400, 300)]
    assert work(4000, 3000, RenderParams(octaves=1, steps=2, max_dim=400)) == 2 * 400 * 300
    assert octave_sizes(400, 300, RenderParams(octaves=1, max_dim=4000)) == [(400, 300)]


def test_the_issues_uploads_have_the_octaves_it_measured() -> None:
    # A 256 x 256 PNG with 12 octaves at scale 4 (a range now refused) topped out at 262144 a
    # side; octaves above the input are now rendered at its size.
    assert octave_sizes(256, 256, unchecked(octaves=12, octave_scale=4))[-1] == (256, 256)
    # A 1 x 65536 PNG at default params: five octaves of 75 x 4.9 M.
    assert octave_sizes(1, 65536, RenderParams()) == [(75, 4915200)] * 5


def refusal(width: int, height: int, params: RenderParams, **limits: object) -> CostRefused:
    with pytest.raises(CostRefused) as refused:
        check_limits(width, height, params, Settings(**limits))  # type: ignore[arg-type]
    return refused.value


def test_an_octave_over_the_pixel_limit_is_refused_with_a_max_dim_that_fits() -> None:
    # Only a thin image can: its octaves are raised to what the backbone sees, 75 pixels high.
    params = RenderParams()
    error = refusal(40000, 10, params, max_pixels=12_000_000, max_aspect_ratio=10_000)
    assert error.field == "params"
    assert str(error) == (
        "the largest of its 5 octaves would be 300000x75 = 22500000 pixels; the limit is "
        "12000000 (ONEIRO_MAX_PIXELS): lower octaves or octave_scale, or set max_dim to at most "
        "2133"
    )
    fits = int(str(error).rsplit("at most ", 1)[1])
    limits = Settings(max_pixels=12_000_000, max_aspect_ratio=10_000)
    check_limits(40000, 10, params.model_copy(update={"max_dim": fits}), limits)
    assert peak_pixels(40000, 10, params.model_copy(update={"max_dim": fits + 1})) > 12e6


def test_work_over_the_limit_names_the_octaves_and_the_setting() -> None:
    error = refusal(400, 300, RenderParams(octaves=1, steps=10), max_work=1_000_000)
    assert "1200000 pixel-steps" in str(error) and "ONEIRO_MAX_WORK" in str(error)
    assert "1000000" in str(error) and error.field == "params"
    # The client reads which octaves it pays for, smallest to largest, width before height.
    error = refusal(400, 300, RenderParams(octaves=3, steps=10), max_work=1_000_000)
    assert error.field == "params"
    assert str(error) == (
        "the job would cost 3111480 pixel-steps (the pixels of its 3 octaves, 308x231 to "
        "400x300, x 10 steps); the limit is 1000000 (ONEIRO_MAX_WORK): lower steps, octaves or "
        "max_dim"
    )


def test_a_job_exactly_at_a_limit_is_admitted() -> None:
    params = RenderParams(octaves=3, steps=10)  # 3111480 pixel-steps, the top octave 400 x 300
    check_limits(400, 300, params, Settings(max_work=3_111_480, max_pixels=400 * 300))
    refusal(400, 300, params, max_work=3_111_479)
    refusal(400, 300, params, max_pixels=400 * 300 - 1)


@pytest.mark.parametrize(("width", "height"), [(800, 40), (40, 800)])
def test_the_largest_octave_is_the_one_with_the_most_pixels(width: int, height: int) -> None:
    # At a scale of 1.01 the two octaves of a 20:1 image share their shorter side (40) and
    # differ by 8 pixels in the longer: only their area tells the larger.
    params = RenderParams(model="vgg19", octaves=2, octave_scale=1.01)
    assert sorted(w * h for w, h in octave_sizes(width, height, params)) == [792 * 40, 32000]
    error = refusal(width, height, params, max_pixels=31_999)
    assert str(error) == (
        f"the largest of its 2 octaves would be {width}x{height} = 32000 pixels; the limit is "
        "31999 (ONEIRO_MAX_PIXELS): lower octaves or octave_scale, or set max_dim to at most 799"
    )


def test_a_downscale_never_leaves_a_side_of_zero_pixels() -> None:
    # An operator may allow any aspect ratio: max_dim 32 brings a 1 x 65536 image to 0.0005 x 32.
    assert render_size(1, 65536, 32) == (1, 32)
    assert render_size(65536, 2, 32) == (32, 1)
    # and the octaves start from that one pixel, raised to what the backbone sees.
    assert octave_sizes(1, 65536, RenderParams(octaves=1, max_dim=32)) == [(75, 2400)]


def test_a_thin_image_is_refused_by_its_aspect_ratio() -> None:
    error = refusal(1, 65536, RenderParams())
    assert error.field == "image"
    assert str(error) == (
        "the image is 1x65536, an aspect ratio of 65536:1; the limit is 20:1 "
        "(ONEIRO_MAX_ASPECT_RATIO): crop the image"
    )
    error = refusal(41, 20, RenderParams(), max_aspect_ratio=2)
    assert str(error).startswith("the image is 41x20, an aspect ratio of 2.05:1; the limit is 2:1")
    # Allowed that ratio, its raised octaves still break the pixel limit.
    error = refusal(1, 65536, RenderParams(), max_aspect_ratio=100_000)
    assert "75x4915200 = 368640000 pixels" in str(error)
    check_limits(1, 20, RenderParams(), Settings())


def test_the_default_limits_admit_the_largest_image_that_fits_at_default_params() -> None:
    # ONEIRO_MAX_WORK's promise: its default never refuses what ONEIRO_MAX_PIXELS lets through.
    settings, params = Settings(), RenderParams()
    check_limits(8192, 8192, params, settings)  # 64 MiP: its top octaves are the input's size
    assert peak_pixels(8192, 8192, params) == settings.max_pixels


def test_a_bad_aspect_ratio_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEIRO_MAX_ASPECT_RATIO", "0.5")
    with pytest.raises(SettingsError, match="ONEIRO_MAX_ASPECT_RATIO"):
        load_settings()


def test_a_mask_with_layers_of_its_own_needs_the_memory_of_a_second_model() -> None:
    plain = RenderParams(octaves=2, steps=2)
    masked = unchecked(octaves=2, steps=2, mask_layers={"mixed2": 1.0})
    weights = BACKBONES["inception_v3"].parameters * 4 * 2  # float32, held twice
    assert peak_memory_bytes(400, 300, masked) - peak_memory_bytes(400, 300, plain) == weights
    # and the work of both passes
    assert work(400, 300, masked) == 2 * work(400, 300, plain)


def test_a_frame_jobs_render_estimate_counts_every_frame() -> None:
    params = RenderParams(octaves=2, steps=2).model_dump(mode="json")
    still = Job(input_width=400, input_height=300, params=params, frames=None)
    clip = Job(input_width=400, input_height=300, params=params, frames=12)
    measured = Throughput(rate=0.01, workers=1)
    one, twelve = render_estimate(still, measured), render_estimate(clip, measured)
    assert twelve["megapixel_steps"] == pytest.approx(12 * one["megapixel_steps"], rel=1e-3)
    assert twelve["render_seconds"] == pytest.approx(12 * one["render_seconds"], rel=1e-2)
    unmeasured = render_estimate(clip, NO_THROUGHPUT)
    assert unmeasured["render_seconds"] is None
    assert unmeasured["megapixel_steps"] == twelve["megapixel_steps"]
