"""Video benchmark: flicker with optical-flow warping against dreaming each frame on its own,
in one run, and seconds per frame.

    .venv/bin/python benchmarks/motion.py                # 8 frames at 256 px, then 512 px speed
    .venv/bin/python benchmarks/motion.py --frames 6 --width 192 --steps 6 --octaves 2 \
        --speed 512 1620                                   # the figures in benchmarks/README.md

The clip is a camera panning right over a real photograph (../shared/images/rocket.jpg, else
the repo's cat), `--pan` pixels a frame. Flicker is the mean absolute difference between
consecutive output frames after compensating the camera motion (frame n shifted back by the
pan onto frame n-1), over the pixels both frames see; the source clip's own is 0. The runs
dream the same frames with the same params and seed: `blend` 0 (each frame dreamed anew from
its source) against the default `blend` (each frame starting from the previous dream carried
onto it by DIS optical flow), the latter at `--steps` and at a half and a third of them: a
frame that starts from the dream so far ends stronger for the same steps, and a stronger dream
differs more between frames, so the fair ratio is at the nearest dream strength (the mean
absolute change from the source), printed with the same-steps ratio. Weights:
../shared/models' InceptionV3 file when present, else random (the arithmetic, and so the speed,
is the same).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS_FILE = ROOT.parent / "shared/models/inception_v3_notop_nsfwjs.weights.h5"
PHOTO = ROOT.parent / "shared/images/rocket.jpg"


def panning_clip(frames: int, width: int, pan: int) -> list[np.ndarray]:
    """`frames` windows of width x 2/3 width on a photo, each `pan` pixels right of the last."""
    height = width * 2 // 3
    source = PHOTO if PHOTO.is_file() else ROOT / "tests/data/chelsea.png"
    with Image.open(source) as image:
        image = image.convert("RGB")
        scale = height / image.height
        wide = image.resize(
            (max(round(image.width * scale), width + pan * frames), height),
            Image.Resampling.BICUBIC,
        )
    picture = np.asarray(wide)
    return [np.ascontiguousarray(picture[:, n * pan : n * pan + width]) for n in range(frames)]


def flicker(frames: list[np.ndarray], pan: int) -> float:
    """Mean absolute difference of consecutive frames over what both see, camera motion
    compensated (frame n's column x is frame n-1's column x + pan)."""
    diffs = [
        np.abs(now[:, : now.shape[1] - pan].astype(np.int16) - before[:, pan:]).mean()
        for before, now in zip(frames, frames[1:], strict=False)
    ]
    return float(np.mean(diffs))


class Look:
    """A dreamed clip's flicker and dream strength (mean absolute change from the source over
    frames after the first: the dream's own amount, which flicker grows with)."""

    def __init__(self, frames: list[np.ndarray], clip: list[np.ndarray], pan: int) -> None:
        self.flicker = flicker(frames, pan)
        self.strength = float(
            np.mean(
                [
                    np.abs(f.astype(np.int16) - c).mean()
                    for f, c in zip(frames[1:], clip[1:], strict=True)
                ]
            )
        )

    def row(self, name: str, steps: int) -> str:
        ratio = self.flicker / self.strength
        return f"| {name} | {steps} | {self.flicker:.2f} | {self.strength:.2f} | {ratio:.2f} |"


def dream(clip: list[np.ndarray], params: object, model: object) -> tuple[list[np.ndarray], float]:
    from worker.engine.motion import dream_video

    out: dict[int, np.ndarray] = {}
    began = time.perf_counter()
    dream_video(iter(clip), len(clip), params, model, on_frame=out.__setitem__)  # type: ignore[arg-type]
    return [out[n] for n in range(len(clip))], (time.perf_counter() - began) / len(clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--pan", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--octaves", type=int, default=3)
    parser.add_argument("--blend", type=float, default=None, help="default: RenderParams'")
    parser.add_argument("--speed", type=int, nargs="*", default=[512], help="widths to time")
    args = parser.parse_args()

    from shared.catalogue import BACKBONES
    from shared.params import RenderParams
    from worker.engine import load_dream_model

    weights = str(WEIGHTS_FILE) if WEIGHTS_FILE.is_file() else "random"
    model = load_dream_model(weights, BACKBONES["inception_v3"].default_layers)
    base = {"steps": args.steps, "octaves": args.octaves, "seed": 1, "step_size": 0.02}
    clip = panning_clip(args.frames, args.width, args.pan)
    dream([clip[0]], RenderParams(**base), model)  # warm-up: traces the model for these shapes

    independent, _ = dream(clip, RenderParams(**base, blend=0.0), model)
    blend = {} if args.blend is None else {"blend": args.blend}
    alone = Look(independent, clip, args.pan)
    print(f"{platform.processor() or platform.machine()}, weights {Path(weights).name}")
    print(
        f"clip: {args.frames} frames of {clip[0].shape[1]}x{clip[0].shape[0]}, pan {args.pan} px "
        f"a frame; {args.octaves} octaves a frame; the source's flicker "
        f"{flicker(clip, args.pan):.2f}"
    )
    print("| run | steps | flicker | dream strength | flicker / strength |")
    print("| --- | --- | --- | --- | --- |")
    print(alone.row("each frame dreamed anew (blend 0)", args.steps))
    # A carried frame starts with the dream built so far, so the same steps make a stronger dream
    # (which flickers more in absolute terms): compared also at fewer steps, and the run whose
    # strength is nearest the independent run's is the fair comparison.
    looks: dict[int, Look] = {}
    for steps in sorted(
        {args.steps, max(1, args.steps // 2), max(1, args.steps // 3)}, reverse=True
    ):
        params = RenderParams(**{**base, "steps": steps}, **blend)
        looks[steps] = Look(dream(clip, params, model)[0], clip, args.pan)
        print(looks[steps].row(f"flow-carried, blend {params.blend}", steps))
    same = looks[args.steps]
    matched = min(looks.values(), key=lambda look: abs(look.strength - alone.strength))
    print(f"ratio at the same steps: {alone.flicker / same.flicker:.2f}x less flicker")
    print(
        f"ratio at the nearest dream strength ({matched.strength:.2f} vs {alone.strength:.2f}): "
        f"{alone.flicker / matched.flicker:.2f}x less flicker"
    )
    for width in args.speed:
        frames = panning_clip(3, width, args.pan)
        dream(frames[:1], RenderParams(**base), model)  # traces this size
        _, per_frame = dream(frames, RenderParams(**base), model)
        print(f"{width}x{frames[0].shape[0]}: {per_frame:.2f} s a frame (flow included)")


if __name__ == "__main__":
    main()
