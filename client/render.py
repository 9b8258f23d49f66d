"""`oneiro render`: dream on a local file with the engine alone (no API, no Redis, no database).

A thin command: it checks its arguments with the same RenderParams the API uses, then imports the
engine (TensorFlow or JAX, seconds to load) and runs it with a progress bar.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from client.api import VIDEO_SUFFIXES
from client.commands import format_eta
from shared.catalogue import BACKBONES
from shared.formats import OUTPUT_FORMATS
from shared.params import RenderParams, error_message, with_frame_defaults
from shared.presets import PRESETS


def _layers(value: str | None) -> dict[str, float] | None:
    if value is None:
        return None
    layers = {}
    for item in value.split(","):
        name, _, weight = item.partition(":")
        layers[name.strip()] = float(weight) if weight else 1.0
    return layers


def _channels(values: tuple[str, ...]) -> dict[str, list[int]] | None:
    channels = {}
    for value in values:
        name, _, indices = value.partition("=")
        channels[name.strip()] = [int(i) for i in indices.split(",") if i.strip()]
    return channels or None


def _backend(ctx: click.Context, value: str) -> str:
    from shared.settings import BACKENDS as backends

    if value not in backends:
        source = ctx.get_parameter_source("backend")
        name = "ONEIRO_BACKEND" if source == click.core.ParameterSource.ENVIRONMENT else "--backend"
        raise click.UsageError(f"{name} must be one of {', '.join(backends)}, not {value!r}")
    return value


# Where a GPU is, the kernel driver makes these device nodes (NVIDIA's, and ROCm's).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd")


def quiet_tensorflow_without_gpu() -> None:
    """On a machine without a GPU, keep TensorFlow's error-level start-up lines (`failed call
    to cuInit: ... CUDA error`) off the terminal: they read like a failure of the render."""
    if any(Path(node).exists() for node in GPU_DEVICE_NODES):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the dream (PNG, TIFF (16-bit), JPEG or WebP by extension).",
)
@click.option(
    "--output-format",
    type=click.Choice(list(OUTPUT_FORMATS)),
    help="The output's format [by its extension; png16 for 16 bits in a PNG].",
)
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Start from a named look.")
@click.option("--quality", type=int, help="JPEG and WebP quality [90].")
@click.option("--model", type=click.Choice(list(BACKBONES)), help="Backbone [inception_v3].")
@click.option(
    "--layers",
    help="Layers to dream, comma-separated, each optionally NAME:WEIGHT "
    "[the backbone's defaults, e.g. mixed3,mixed5].",
)
@click.option(
    "--channels",
    multiple=True,
    metavar="LAYER=I,J,...",
    help="Maximize only these channels of a layer; repeatable.",
)
@click.option("--steps", type=int, help="Gradient steps per octave [20].")
@click.option("--step-size", type=float, help="Gradient-ascent step [0.01].")
@click.option("--octaves", type=int, help="Number of octaves, centred on the input size [5].")
@click.option("--octave-scale", type=float, help="Size ratio between octaves [1.3].")
@click.option(
    "--grad-norm", type=click.Choice(["std", "laplacian"]), help="Gradient normalization [std]."
)
@click.option(
    "--detail/--no-detail", default=None, help="Re-inject the input's detail between octaves [on]."
)
@click.option("--tile-size", type=int, help="Gradient tile side in pixels [512].")
@click.option("--tv-weight", type=float, help="Total-variation smoothing [0].")
@click.option(
    "--preserve-colors/--no-preserve-colors",
    default=None,
    help="Keep the input's colours, dream in luminance only [off].",
)
@click.option(
    "--max-loss", type=float, help="Stop an octave's steps once its loss passes this [none]."
)
@click.option("--seed", type=int, help="Random seed [random]; the same seed, the same image.")
@click.option("--max-dim", type=int, help="Downscale the input so its longer side fits.")
@click.option(
    "--guide",
    type=click.Path(exists=True, dir_okay=False),
    help="A guide image: the dream seeks its features.",
)
@click.option("--guide-weight", type=float, help="With --guide: guided (1) to plain (0) [1].")
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False),
    help="A greyscale mask: white dreams, black keeps the input.",
)
@click.option(
    "--mask-layers",
    help="With --mask: layers (as --layers) the black part dreams instead of keeping the input.",
)
@click.option(
    "--animation",
    "animation",
    metavar="JSON",
    help='Make a zoom animation of the image (an MP4), e.g. \'{"frames": 48, "zoom": 1.03}\'.',
)
@click.option(
    "--blend",
    type=float,
    help="A video: the share of the previous dream carried onto each frame by flow [0.8].",
)
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="'imagenet', 'random' (seeded, for tests) or a weights file path.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Arithmetic of the model.",
)
@click.option(
    "--backend",
    envvar="ONEIRO_BACKEND",
    callback=lambda ctx, param, value: _backend(ctx, value),
    default="tensorflow",
    show_default=True,
    help="Keras backend to compute with: tensorflow or jax (or ONEIRO_BACKEND).",
)
def render(
    input_path: str,
    output: str,
    layers: str | None,
    channels: tuple[str, ...],
    weights: str,
    precision: str,
    backend: str,
    guide: str | None,
    mask: str | None,
    mask_layers: str | None,
    animation: str | None,
    **options: Any,
) -> None:
    """Dream on INPUT and write the result to OUTPUT, with a progress bar; the file carries
    its recipe (`oneiro recipe OUTPUT`). A video INPUT (.mp4, .mov, .webm), or an image with
    --animation, makes an MP4, frame by frame."""
    chosen = {key: value for key, value in options.items() if value is not None}
    moving = animation is not None or Path(input_path).suffix.lower() in VIDEO_SUFFIXES
    if moving:
        if guide or mask:
            raise click.UsageError("--guide and --mask are for stills, not animations or videos")
        try:
            chosen = with_frame_defaults(
                chosen if animation is None else {**chosen, "animation": json.loads(animation)}
            )
        except ValueError as exc:
            raise click.UsageError(f"--animation: not valid JSON: {exc}") from None
    if "output_format" not in chosen:
        chosen["output_format"] = FORMAT_BY_EXTENSION.get(Path(output).suffix.lower(), "png")
    if layers is not None:
        chosen["layers"] = _layers(layers)
    if mask_layers is not None:
        chosen["mask_layers"] = _layers(mask_layers)
    for option, needs, given in (
        ("--guide-weight", "--guide", guide),
        ("--mask-layers", "--mask", mask),
    ):
        if option[2:].replace("-", "_") in chosen and given is None:
            raise click.UsageError(f"{option} needs {needs}")
    if channels:
        chosen["channels"] = _channels(channels)
    try:
        params = RenderParams.model_validate(chosen)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {error_message(e)}" for e in exc.errors()
        )
        raise click.UsageError(problems) from None

    quiet_tensorflow_without_gpu()
    # Imported once the arguments are known good: Keras takes seconds to load, and reads its
    # backend (which the engine sets from ONEIRO_BACKEND) when it does.
    from shared.controls import decode_mask
    from shared.formats import output_format
    from shared.images import (
        ImageRejected,
        as_depth,
        decode_image,
        decode_rgb,
        fit_within,
    )
    from shared.recipes import encode_result

    os.environ["ONEIRO_BACKEND"] = backend
    from worker.engine import WeightsUnavailable, load_dream_model
    from worker.engine import render as dream
    from worker.engine.controls import Controls

    if moving:
        _render_motion(Path(input_path), Path(output), params, weights, precision)
        return
    fmt = output_format(params.output_format)
    decoded = decode_image(Path(input_path).read_bytes())
    image = fit_within(as_depth(decoded.pixels, fmt.bits), params.max_dim)
    try:
        model = load_dream_model(
            weights,
            params.layers,
            model=params.model,
            channels=params.channels,
            precision=precision,
        )
        masked = (
            load_dream_model(weights, params.mask_layers, model=params.model, precision=precision)
            if mask and params.mask_layers
            else None
        )
        controls = Controls(
            guide=decode_rgb(Path(guide).read_bytes()) if guide else None,
            mask=decode_mask(Path(mask).read_bytes()) if mask else None,
            mask_model=masked,
        )
    except (WeightsUnavailable, ImageRejected, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{image.shape[1]}x{image.shape[0]}, {params.model} "
        f"{','.join(params.layers)}, seed {params.seed}, {model.precision}, {model.backend}",
        err=True,
    )
    with progress_bar(
        lambda p: (
            f"octave {p.octave}/{p.octaves} step {p.step}/{p.steps} tiles {p.tiles_done}/{p.tiles}"
        )
    ) as progress:
        result = dream(image, params, model, on_progress=progress, controls=controls)
    recipe = _recipe(
        params,
        weights,
        model,
        guide=Path(guide).read_bytes() if guide else None,
        mask=Path(mask).read_bytes() if mask else None,
    )
    Path(output).write_bytes(encode_result(result, params, recipe, decoded.icc_profile))
    click.echo(output)


def _render_motion(
    source: Path, output: Path, params: RenderParams, weights: str, precision: str
) -> None:
    """A zoom animation of an image, or a video dreamed frame by frame, written as an MP4."""
    from shared.formats import frame_rate
    from shared.images import ImageRejected, decode_rgb, fit_within
    from shared.recipes import recipe_text
    from shared.video import (
        VideoRejected,
        decode_frames,
        encode_mp4,
        frame_times,
        inspect_video,
        video_fps,
    )
    from worker.engine import WeightsUnavailable, animate, dream_video, load_dream_model

    data = source.read_bytes()
    try:
        model = load_dream_model(
            weights,
            params.layers,
            model=params.model,
            channels=params.channels,
            precision=precision,
        )
        times = None
        if params.animation is None:
            count = inspect_video(data, 2**40, 10**9, float("inf")).frames
            times = frame_times(data)  # a variable rate's frames keep their times
        else:
            image = fit_within(decode_rgb(data), params.max_dim)
            count = params.animation.frames
    except (WeightsUnavailable, ImageRejected, VideoRejected, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    frames: dict[int, Any] = {}
    with progress_bar(
        lambda p: (
            f"frame {p.frame}/{p.frames} octave {p.octave}/{p.octaves} step {p.step}/{p.steps}"
        )
    ) as progress:
        if params.animation is None:
            dream_video(
                decode_frames(data, params.max_dim),
                count,
                params,
                model,
                on_frame=frames.__setitem__,
                on_progress=progress,
            )
            fps = video_fps(data)
        else:
            animate(image, params, model, on_frame=frames.__setitem__, on_progress=progress)
            fps = frame_rate(params.animation.fps)
    audio = data if params.animation is None else None
    if times is not None and len(times) < len(frames):
        times = None
    recipe = _recipe(params, weights, model)
    output.write_bytes(
        encode_mp4(
            (frames[n] for n in sorted(frames)),
            fps,
            audio_from=audio,
            times=times,
            recipe=recipe_text(recipe),
        )
    )
    click.echo(str(output))


# What `render -o FILE` writes by FILE's extension (a TIFF is 16-bit: Oneiro writes no other).
FORMAT_BY_EXTENSION = {
    ".tif": "tiff16",
    ".tiff": "tiff16",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
}


@click.command()
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
def recipe(path: str) -> None:
    """Print the recipe an Oneiro result FILE carries: its params (seed included), backbone,
    weights, engine, backend and precision, as JSON (`submit --recipe FILE` renders it again)."""
    import json

    from shared.images import recipe_of

    found = recipe_of(Path(path).read_bytes())
    if found is None:
        raise click.ClickException(f"{path} carries no Oneiro recipe")
    click.echo(json.dumps(found, indent=2, sort_keys=True))


@contextlib.contextmanager
def progress_bar(describe: Callable[[Any], str]) -> Iterator[Callable[[Any], None]]:
    """A progress bar on stderr, and the engine's progress callback that moves it: the
    fraction done, `describe(progress)` and the engine's ETA beside it."""
    # The engine's ETA, not tqdm's: tqdm's rate would count the first, tracing batch of each
    # octave, and promised minutes for a render of seconds.
    from tqdm import tqdm

    with tqdm(
        total=1.0, unit="", bar_format="{l_bar}{bar}| {elapsed} {postfix}", file=sys.stderr
    ) as bar:

        def progress(p: Any) -> None:
            bar.set_postfix_str(f"{describe(p)} ETA {format_eta(p.eta_seconds)}", refresh=False)
            bar.update(p.fraction - bar.n)

        yield progress


def _recipe(
    params: RenderParams,
    weights: str,
    model: Any,
    guide: bytes | None = None,
    mask: bytes | None = None,
) -> dict[str, Any]:
    """The recipe a local render's file carries, as a worker's result carries its own."""
    from shared.recipes import device_name, make_recipe, weights_digest

    return make_recipe(
        params.model_dump(mode="json"),
        weights=weights_digest(weights),
        backend=model.backend,
        precision=model.precision,
        device=device_name(model.device),
        guide=guide,
        mask=mask,
    )
