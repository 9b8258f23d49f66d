"""`oneiro submit`, `estimate`, `status`, `list`, `cancel`, `retry`, `result`: the API from
the command line.

These talk HTTP only (client.api); they import neither TensorFlow nor the database, so they
start at once and work from any machine that can reach the API.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from client.api import ApiError, Client
from client.config import config_hint, resolve_config
from client.uploads import UPLOAD_THRESHOLD, UploadMemo, send_upload
from shared.formats import result_format

F = TypeVar("F", bound=Callable[..., Any])
STATUSES = ["queued", "running", "succeeded", "failed", "canceled", "expired"]


def connection(command: F) -> F:
    """Add --url and --key, and hand the command a Client; an ApiError becomes one line."""

    @click.option(
        "--url",
        metavar="URL",
        help="The API [$ONEIRO_URL, else the URL `make run` saved, else http://127.0.0.1:8000].",
    )
    @click.option(
        "--key", metavar="KEY", help="API key [$ONEIRO_API_KEY, else the key `make run` saved]."
    )
    @functools.wraps(command)
    def wrapper(*args: Any, url: str | None, key: str | None, **kwargs: Any) -> Any:
        # `oneiro --key K status ID`: the group's options, where the command has none of its own.
        root = click.get_current_context().find_root().params
        config = resolve_config(url or root.get("url"), key or root.get("key"))
        if not config.key:
            raise click.ClickException(f"no API key: {config_hint()}")
        client = Client(config.url, config.key)
        try:
            return command(client, *args, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            client.close()

    # The wrapper takes the command's own arguments: a signature mypy cannot write down.
    return wrapper  # type: ignore[return-value]


def _params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    """--params-json, then each --param KEY=VALUE over it; a VALUE is JSON when it parses."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = json.loads(params_json)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--params-json") from None
        if not isinstance(params, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params-json")
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text  # `grad_norm=laplacian` need not be quoted
        params[name.strip()] = value
    return params


def format_eta(seconds: float | None) -> str:
    """`m:ss` (or `XhYYm`) of an ETA; `--:--` while there is none."""
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def describe_progress(job: dict[str, Any]) -> str:
    """`octave 2/5 step 3/8 ETA 0:12`, as far as the job has got."""
    p = job.get("progress") or {}
    if job.get("status") == "queued" and job.get("queue"):
        return f"queued, {describe_standing(job['queue'])}"
    if job.get("status") != "running":
        return str(job.get("status"))
    frame = f"frame {p.get('frame') or 1}/{p['frames']} " if p.get("frames") else ""
    return (
        f"{frame}octave {p.get('octave', 1)}/{p.get('octaves')} step {p.get('step', 0)}/"
        f"{p.get('steps')} ETA {format_eta(p.get('eta_seconds'))}"
    )


def describe_standing(queue: dict[str, Any]) -> str:
    """`position 2; starts in about 1:30` for a queued job's standing (the API's `queue`)."""
    seconds = queue.get("estimated_start_seconds")
    start = (
        "start time not known yet" if seconds is None else f"starts in about {format_eta(seconds)}"
    )
    return f"position {queue['position']}; {start}"


def _wait(client: Client, job_id: str) -> dict[str, Any]:
    """Follow the job with a progress bar on stderr until it ends; its last state."""
    from tqdm import tqdm

    job: dict[str, Any] = {}
    # The description sits after the bar: tqdm's own postfix would begin with a comma.
    with tqdm(
        total=1.0,
        bar_format="{percentage:3.0f}%|{bar}| {desc}",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0,
    ) as bar:
        for job in client.follow(job_id):
            fraction = float((job.get("progress") or {}).get("fraction") or 0.0)
            # A retried job starts again from nothing: let the bar go back too.
            bar.n = min(max(fraction, 0.0), 1.0)
            bar.set_description_str(describe_progress(job), refresh=False)
            bar.refresh()
    return job


def job_options(command: F) -> F:
    """IMAGE and the options of a job request, shared by `submit` and `estimate`."""
    options = [
        click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option(
            "--param",
            "pairs",
            multiple=True,
            metavar="KEY=VALUE",
            help="A render parameter, e.g. steps=20 or layers=mixed4 (VALUE as JSON, else "
            "text); repeatable.",
        ),
        click.option("--params-json", metavar="JSON", help="All parameters as one JSON object."),
        click.option(
            "--guide",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A guide image: the dream seeks its features (params.guide_weight mixes them in).",
        ),
        click.option(
            "--mask",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A greyscale mask of the image's shape: white dreams, black keeps the input.",
        ),
        click.option(
            "--preset", metavar="NAME", help="Start from a named look (`oneiro presets`)."
        ),
        click.option(
            "--recipe",
            metavar="JOB_ID|FILE",
            help="Render the look of an earlier result: its job id, or a result file carrying "
            "its recipe.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@job_options
@click.option("--wait", is_flag=True, help="Show progress until the job ends, then download.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where --wait writes the result [JOB_ID.png, the format's extension, or .mp4 for an "
    "animation or video (.gif or .webp for an animation asking one)]; implies --wait.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    help="A file over 32 MB goes as a resumable upload: go on with the one an interrupted "
    "run of this command left (the default), or start it over.",
)
@connection
def submit(
    client: Client,
    image: Path,
    pairs: tuple[str, ...],
    params_json: str | None,
    guide: Path | None,
    mask: Path | None,
    preset: str | None,
    recipe: str | None,
    wait: bool,
    output: Path | None,
    resume: bool,
) -> None:
    """Upload IMAGE (or a video: .mp4, .mov, .webm) as a new job and print its id; with --wait,
    follow it and save the result. `--param animation='{"frames": 48, "zoom": 1.03}'` makes a
    zoom animation of an image. A file over 32 MB is sent as a resumable upload first, with a
    progress bar; if the connection drops, run the same command again to go on."""
    params = _job_params(pairs, params_json, preset)
    upload = _upload(client, image, resume) if image.stat().st_size > UPLOAD_THRESHOLD else None
    job = client.submit(
        image, params, guide=guide, mask=mask, recipe=_recipe(recipe), upload=upload
    )
    if upload is not None:
        UploadMemo(client.url, image).forget()  # the job's now: nothing to resume
    job_id = job["id"]
    click.echo(job_id)
    if not (wait or output):
        return
    if output is not None:
        _check_extension(job, output, "--output")
    try:
        job = _wait(client, job_id)
    except KeyboardInterrupt:
        click.echo("", err=True)
        goes_on = f"job {job_id} goes on; `oneiro status {job_id}` shows it"
        try:
            cancel_it = click.confirm(f"Cancel job {job_id}?", default=False, err=True)
        except click.Abort:  # a second Ctrl-C at the question: leave the job be, and say so
            click.echo(f"\n{goes_on}", err=True)
            raise click.exceptions.Exit(130) from None
        if cancel_it:
            canceled = client.cancel(job_id)
            click.echo(f"job {job_id} is {canceled['status']}", err=True)
        else:
            click.echo(goes_on, err=True)
        raise click.exceptions.Exit(130) from None
    _finish(client, job, output or Path(f"{job_id}.{_extension(job)}"))


def _upload(client: Client, image: Path, resume: bool) -> str:
    """Send IMAGE as a resumable upload with a progress bar (from where a resumed upload
    stands); its id."""
    from tqdm import tqdm

    bar: tqdm[None] | None = None

    def progress(offset: int, size: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=size,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"uploading {image.name}",
                file=sys.stderr,
            )
        bar.update(offset - bar.n)

    try:
        return send_upload(client, image, progress, resume)
    finally:
        if bar is not None:
            bar.close()


@click.command()
@job_options
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as the API returns it.")
@connection
def estimate(
    client: Client,
    image: Path,
    pairs: tuple[str, ...],
    params_json: str | None,
    guide: Path | None,
    mask: Path | None,
    preset: str | None,
    recipe: str | None,
    as_json: bool,
) -> None:
    """What submitting IMAGE would cost, before sending it: its work, render time, peak memory
    and expected wait (nothing is stored; refused as submit would refuse it)."""
    params = _job_params(pairs, params_json, preset)
    told = client.estimate(image, params, guide=guide, mask=mask, recipe=_recipe(recipe))
    if as_json:
        click.echo(json.dumps(told, indent=2))
        return
    render, memory, wait = told["estimate"], told["memory"], told["wait"]
    where = f" (worker class {memory['worker_class']})" if memory["worker_class"] else ""
    click.echo(f"work:   {render['megapixel_steps']} megapixel-steps")
    click.echo(f"render: {_seconds(render['render_seconds'])} ({render['basis']})")
    click.echo(f"memory: {memory['peak_bytes'] / 2**30:.2f} GiB at most{where}")
    click.echo(f"wait:   {_seconds(wait['seconds'])} ({wait['basis']})")
    for warning in told.get("warnings", []):
        click.echo(f"warning: {warning}")


def _seconds(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"about {format_eta(seconds)}"


def _job_params(
    pairs: tuple[str, ...], params_json: str | None, preset: str | None
) -> dict[str, Any]:
    params = _params(pairs, params_json)
    if preset is not None:
        params["preset"] = preset
    return params


def _recipe(value: str | None) -> str | None:
    """--recipe as sent: a job id as it is; a file, the recipe it carries."""
    if value is None or not Path(value).is_file():
        return value
    from shared.images import recipe_of

    recipe = recipe_of(Path(value).read_bytes())
    if recipe is None:
        raise click.BadParameter(f"{value} carries no Oneiro recipe", param_hint="--recipe")
    return json.dumps(recipe)


def _extension(job: dict[str, Any]) -> str:
    """The file extension of the job's result."""
    return result_format(job.get("kind", "image"), job["params"].get("output_format")).extension


# Other spellings of an extension that name the same format.
SAME_EXTENSIONS = {"tif": {"tif", "tiff"}, "jpg": {"jpg", "jpeg"}}


def _check_extension(job: dict[str, Any], output: Path, option: str) -> None:
    """A usage error when `output`'s extension names another format than the job's result:
    TIFF bytes under `.png` open nowhere (or wrongly) and say nothing of why."""
    extension = _extension(job)
    if output.suffix.lower().lstrip(".") in SAME_EXTENSIONS.get(extension, {extension}):
        return
    fmt = result_format(job.get("kind", "image"), job["params"].get("output_format"))
    name = fmt.media_type.split("/")[1].upper()
    raise click.BadParameter(
        f"job {job['id']}'s result is a{'n' if name.startswith('MP') else ''} {name}, not "
        f"{output.suffix or 'a file without an extension'}: write it to "
        f"{output.with_suffix('.' + extension)}",
        param_hint=option,
    )


@click.command()
@connection
def presets(client: Client) -> None:
    """List the named looks a job may start from (`submit --preset NAME`)."""
    for preset in client.presets():
        click.echo(f"{preset['name']:<12} {preset['description']}")
        click.echo(f"{'':<12} {json.dumps(preset['params'])}")


def _finish(client: Client, job: dict[str, Any], output: Path) -> None:
    """Save a succeeded job's result; say why any other ended job has none."""
    if job["status"] == "failed":
        raise click.ClickException(f"job {job['id']} failed: {job.get('error')}")
    if job["status"] != "succeeded":
        raise click.ClickException(f"job {job['id']} was {job['status']}")
    output.write_bytes(client.result(job["id"]))
    click.echo(str(output))


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job as the API returns it.")
@connection
def status(client: Client, job_id: str, as_json: bool) -> None:
    """Show job ID: status, progress, error."""
    job = client.job(job_id)
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    progress = job.get("progress") or {}
    lines = [
        f"id        {job['id']}",
        f"status    {job['status']} (attempt {job.get('attempt')})",
        f"progress  {100 * float(progress.get('fraction') or 0):.0f}%"
        + (f"  {describe_progress(job)}" if job["status"] == "running" else ""),
        f"created   {job.get('created_at')}",
        f"finished  {job.get('finished_at') or '-'}",
    ]
    if job.get("queue"):
        lines.insert(2, f"queue     {describe_standing(job['queue'])}")
    if job.get("error"):
        lines.append(f"error     {job['error']}")
    if job.get("result_url"):
        lines.append(f"result    oneiro result {job['id']}")
    click.echo("\n".join(lines))


@click.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", metavar="CURSOR", help="Go on from where the previous page stopped.")
@connection
def list_jobs(client: Client, status: str | None, limit: int, cursor: str | None) -> None:
    """List your jobs, newest first, a page at a time."""
    page = client.job_page(status, limit, cursor)
    jobs = page["jobs"]
    if not jobs:
        click.echo("no jobs", err=True)
    for job in jobs:
        fraction = float((job.get("progress") or {}).get("fraction") or 0)
        click.echo(f"{job['id']}  {job['status']:<9}  {100 * fraction:3.0f}%  {job['created_at']}")
    if page.get("next_cursor"):
        # On stderr, so that `oneiro list | cut -c1-36` still gives ids only.
        again = " ".join(
            part
            for part in (
                "oneiro list",
                f"--status {status}" if status else "",
                f"--limit {limit}" if limit != 20 else "",
                f"--cursor {page['next_cursor']}",
            )
            if part
        )
        click.echo(f"more jobs: {again}", err=True)


@click.command()
@click.argument("what", type=click.Choice(["key", "url"]))
def config(what: str) -> None:
    """Print the API key or URL the other commands use (--key/--url aside): from
    ONEIRO_API_KEY / ONEIRO_URL, else the file `make run` saved ($ONEIRO_CLIENT_CONFIG)."""
    resolved = resolve_config()
    if what == "url":
        click.echo(resolved.url)
    elif resolved.key:
        click.echo(resolved.key)
    else:
        raise click.ClickException(f"no API key: {config_hint()}")


@click.command()
@click.argument("job_id", metavar="ID")
@connection
def cancel(client: Client, job_id: str) -> None:
    """Cancel job ID if it is queued or running."""
    click.echo(f"{job_id} {client.cancel(job_id)['status']}")


@click.command()
@click.argument("job_id", metavar="ID")
@connection
def retry(client: Client, job_id: str) -> None:
    """Run failed, canceled or expired job ID again."""
    click.echo(f"{job_id} {client.retry(job_id)['status']}")


@click.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="[ID.png, ID.tif ...]"
)
@connection
def result(client: Client, job_id: str, output: Path | None) -> None:
    """Download the result image of succeeded job ID."""
    job = client.job(job_id)
    if output is None:
        output = Path(f"{job_id}.{_extension(job)}")
    _check_extension(job, output, "--output")
    output.write_bytes(client.result(job_id))
    click.echo(str(output))


COMMANDS = [submit, estimate, status, list_jobs, cancel, retry, result, config, presets]
