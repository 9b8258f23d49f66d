"""The frame loop of the engine (worker/engine/motion.py): transforms, flow, occlusion, resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.catalogue import BACKBONES
from shared.images import decode_rgb, fit_within
from shared.params import Animation, RenderParams
from tests.utils import CHELSEA
from worker.engine import Canceled, load_dream_model
from worker.engine.motion import (
    FrameProgress,
    animate,
    carry,
    dense_flow,
    dream_video,
    occluded,
    transform,
    warp,
)

_MODEL: list[Any] = []


def model() -> Any:
    if not _MODEL:
        _MODEL.append(load_dream_model("random", BACKBONES["inception_v3"].default_layers))
    return _MODEL[0]


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    return fit_within(decode_rgb(CHELSEA.read_bytes()), 120)  # 120 x 80


def params(**kw: Any) -> RenderParams:
    return RenderParams(**{"steps": 2, "octaves": 1, "seed": 1, "tile_size": 96, **kw})


def pan(image: np.ndarray, frames: int, step: int, width: int) -> list[np.ndarray]:
    """A camera panning right over `image`, `step` pixels a frame."""
    return [np.ascontiguousarray(image[:, n * step : n * step + width]) for n in range(frames)]


def test_transform_shifts_rotates_and_zooms_about_the_centre(cat: np.ndarray) -> None:
    assert np.array_equal(transform(cat, 1.0, 0.0, (0.0, 0.0)), cat)
    shifted = transform(cat, 1.0, 0.0, (5.0, 0.0))
    assert np.array_equal(shifted[:, 5:], cat[:, :-5])
    zoomed = transform(cat, 2.0, 0.0, (0.0, 0.0))
    assert zoomed.shape == cat.shape
    # The centre stays put and the picture doubles around it.
    assert np.abs(zoomed[40, 60].astype(int) - cat[40, 60].astype(int)).max() <= 12
    assert not np.array_equal(zoomed, cat)


def test_dense_flow_finds_a_pan_and_warp_undoes_it(cat: np.ndarray) -> None:
    big = fit_within(decode_rgb(CHELSEA.read_bytes()), 300)
    first, second = pan(big, 2, 4, 160)
    backward = dense_flow(second, first)  # where each pixel of the second frame was
    inner = backward[20:-20, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(4.0, abs=0.3)
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.3)
    rebuilt = warp(first, backward)
    error = np.abs(rebuilt[20:-20, 20:-20].astype(int) - second[20:-20, 20:-20].astype(int))
    assert error.mean() < 4


def test_the_forward_backward_check_marks_what_the_previous_frame_hides() -> None:
    # A square moves 6 pixels right over a still background: the strip it uncovers has no
    # consistent flow; the background far from it does.
    backward = np.zeros((40, 40, 2), np.float32)
    forward = np.zeros((40, 40, 2), np.float32)
    forward[10:20, 10:20, 0] = 6.0  # the square's pixels move right
    backward[10:20, 16:26, 0] = -6.0  # in the new frame, they came from 6 pixels left
    hidden = occluded(backward, forward)
    assert hidden[10:20, 10:16].all()  # uncovered: forward flow there points away
    assert not hidden[30:, :].any() and not hidden[10:20, 16:26].any()


def test_carry_takes_the_new_frame_where_flow_fails_and_blends_elsewhere(cat: np.ndarray) -> None:
    big = fit_within(decode_rgb(CHELSEA.read_bytes()), 300)
    first, second = pan(big, 2, 3, 160)
    dream = np.full_like(first, 255)
    start = carry(first, dream, second, 0.5)
    assert start.shape == second.shape and start.dtype == np.uint8
    inner = start[20:-20, 20:-20].astype(float)
    expected = 0.5 * 255 + 0.5 * second[20:-20, 20:-20].astype(float)
    assert np.abs(inner - expected).mean() < 6
    assert np.array_equal(carry(first, dream, second, 0.0), second)


def test_carry_starts_every_pixel_the_flow_cannot_carry_from_the_new_frame_exactly() -> None:
    # A bright square moves 8 pixels right over a textured background: the strip it uncovers
    # was hidden in the previous frame, so no dream there can be carried onto it.
    rng = np.random.default_rng(5)
    background = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    first, second = background.copy(), background.copy()
    first[20:44, 20:44] = 250
    second[20:44, 28:52] = 250
    dream = 255 - first  # a dream unlike either frame
    start = carry(first, dream, second, 1.0)  # all dream wherever it can be carried
    hidden = occluded(dense_flow(second, first), dense_flow(first, second))
    assert hidden.sum() > 50  # the uncovered strip, at least
    assert np.array_equal(start[hidden], second[hidden])


def test_an_animation_dreams_each_frame_from_the_previous_and_resumes_identically(
    cat: np.ndarray,
) -> None:
    run = params(animation=Animation(frames=4, zoom=1.05, rotate=2, translate=(1, 0)))
    frames: dict[int, np.ndarray] = {}
    seen: list[FrameProgress] = []
    animate(cat, run, model(), on_frame=frames.__setitem__, on_progress=seen.append)
    assert sorted(frames) == [0, 1, 2, 3]
    assert all(frame.shape == cat.shape for frame in frames.values())
    assert not np.array_equal(frames[1], frames[2])
    assert [p.frame for p in seen] == sorted(p.frame for p in seen)
    assert {p.frame for p in seen} == {1, 2, 3, 4} and seen[-1].frames == 4
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    resumed: dict[int, np.ndarray] = {}
    animate(cat, run, model(), on_frame=resumed.__setitem__, start=2, previous=frames[1])
    assert sorted(resumed) == [2, 3]
    assert all(np.array_equal(resumed[n], frames[n]) for n in (2, 3))


def test_a_video_dream_keeps_the_frames_and_resumes_identically(cat: np.ndarray) -> None:
    clip = pan(fit_within(decode_rgb(CHELSEA.read_bytes()), 200), 3, 4, 96)
    run = params()
    frames: dict[int, np.ndarray] = {}
    dream_video(iter(clip), 3, run, model(), on_frame=frames.__setitem__)
    assert sorted(frames) == [0, 1, 2] and frames[2].shape == clip[2].shape
    resumed: dict[int, np.ndarray] = {}
    dream_video(
        iter(clip[2:]),
        3,
        run,
        model(),
        on_frame=resumed.__setitem__,
        start=2,
        previous=(clip[1], frames[1]),
    )
    assert sorted(resumed) == [2] and np.array_equal(resumed[2], frames[2])


def test_a_stop_request_stops_the_frame_loop(cat: np.ndarray) -> None:
    done: list[int] = []
    with pytest.raises(Canceled):
        animate(
            cat,
            params(animation=Animation(frames=5)),
            model(),
            on_frame=lambda n, _frame: done.append(n),
            should_stop=lambda: len(done) >= 2,
        )
    assert done == [0, 1]
