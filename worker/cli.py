"""The `oneiro` command: `render` dreams on a local file with the engine alone (no Redis, no
database); `keys` makes API keys; `submit`, `status`, `list`, ... call the API
(worker.client_commands)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from shared.catalogue import BACKBONES
from shared.formats import OUTPUT_FORMATS
from shared.params import RenderParams
from shared.presets import PRESETS


@click.group()
def main() -> None:
    """Oneiro: asynchronous DeepDream rendering."""


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


@main.command()
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
@click.option("--steps", type=int, help="Gradient steps per octave [100].")
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
@click.option("--seed", type=int, help="Random seed [random]; the same seed, the same image.")
@click.option("--max-dim", type=int, help="Downscale the input so its longer side fits.")
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
    **options: Any,
) -> None:
    """Dream on INPUT and write the result to OUTPUT, with a progress bar; the file carries
    its recipe (`oneiro recipe OUTPUT`)."""
    chosen = {key: value for key, value in options.items() if value is not None}
    if "output_format" not in chosen:
        chosen["output_format"] = FORMAT_BY_EXTENSION.get(Path(output).suffix.lower(), "png")
    if layers is not None:
        chosen["layers"] = _layers(layers)
    if channels:
        chosen["channels"] = _channels(channels)
    try:
        params = RenderParams.model_validate(chosen)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(problems) from None

    quiet_tensorflow_without_gpu()
    # Imported once the arguments are known good: Keras takes seconds to load, and reads its
    # backend (which the engine sets from ONEIRO_BACKEND) when it does.
    from tqdm import tqdm

    from shared.formats import output_format
    from shared.images import as_depth, decode_image, encode_image, fit_within
    from shared.recipes import make_recipe, recipe_text, weights_digest

    os.environ["ONEIRO_BACKEND"] = backend
    from worker.engine import WeightsUnavailable, load_dream_model
    from worker.engine import render as dream

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
    except WeightsUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{image.shape[1]}x{image.shape[0]}, {params.model} "
        f"{','.join(params.layers)}, seed {params.seed}, {model.precision}, {model.backend}",
        err=True,
    )
    from worker.client_commands import format_eta

    # The engine's ETA, not tqdm's: tqdm's rate would count the first, tracing batch of each
    # octave, and promised minutes for a render of seconds.
    with tqdm(
        total=1.0,
        unit="",
        bar_format="{l_bar}{bar}| {elapsed} {postfix}",
        file=sys.stderr,
    ) as bar:

        def progress(p: Any) -> None:
            bar.set_postfix_str(
                f"octave {p.octave}/{p.octaves} step {p.step}/{p.steps} "
                f"tiles {p.tiles_done}/{p.tiles} ETA {format_eta(p.eta_seconds)}",
                refresh=False,
            )
            bar.update(p.fraction - bar.n)

        result = dream(image, params, model, on_progress=progress)
    recipe = make_recipe(
        params.model_dump(mode="json"),
        weights=weights_digest(weights),
        backend=model.backend,
        precision=model.precision,
    )
    encoded = encode_image(
        result,
        fmt,
        quality=params.quality,
        recipe=recipe_text(recipe),
        icc_profile=decoded.icc_profile,
    )
    Path(output).write_bytes(encoded)
    click.echo(output)


# What `render -o FILE` writes by FILE's extension (a TIFF is 16-bit: Oneiro writes no other).
FORMAT_BY_EXTENSION = {
    ".tif": "tiff16",
    ".tiff": "tiff16",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
}


@main.command()
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


@main.group()
def keys() -> None:
    """Make and revoke API keys (in the database at DATABASE_URL)."""


@contextlib.contextmanager
def _session() -> Iterator[Any]:
    from shared.db import create_db_engine, create_session_factory
    from shared.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    engine = create_db_engine(settings.database_url)
    try:
        _require_schema(engine)
        with create_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _require_schema(engine: Any) -> None:
    """Stop with one line, not a SQLAlchemy traceback, when the keys' tables were never made."""
    from sqlalchemy import inspect

    from shared.models import ApiKey, Tenant

    found = inspect(engine)
    if not all(found.has_table(model.__tablename__) for model in (Tenant, ApiKey)):
        raise click.ClickException(
            "the database at DATABASE_URL has no schema yet: create it with "
            "`alembic upgrade head` (`make run` does this first)"
        )


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key belongs to; made if new.")
def create_key_command(tenant: str) -> None:
    """Make a key for TENANT and print it (it is shown only this once)."""
    from shared.tenants import TenantError, create_key

    with _session() as session:
        try:
            made = create_key(session, tenant)
        except TenantError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(made.key)
    click.echo(f"tenant {made.tenant!r}, key prefix {made.prefix}", err=True)
    if made.webhook_secret:
        click.echo(
            f"new tenant: its webhook signing secret is {made.webhook_secret} (shown once)",
            err=True,
        )


@keys.command("revoke")
@click.argument("key_or_prefix")
def revoke_key_command(key_or_prefix: str) -> None:
    """Revoke a key, given whole or by the prefix `keys create` printed."""
    from shared.tenants import revoke_key

    with _session() as session:
        revoked = revoke_key(session, key_or_prefix)
    if not revoked:
        raise click.ClickException(f"no live key matches {key_or_prefix!r}")
    click.echo(f"revoked {revoked} key(s)")


def _add_client_commands() -> None:
    # The client commands speak HTTP only; they live apart so that nothing here grows imports.
    from worker.client_commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_client_commands()

if __name__ == "__main__":
    main()
