"""The web page at `/`, in headless Chromium (Debian's, driven by Playwright), against a real API
under gunicorn and a real Celery worker."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.utils import CHELSEA, ROOT, Stack, chromium_path, running_stack, wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("web"), redis_url) as running:
        yield running
        sys.stdout.write(running.worker_log.read_text()[-2000:])


@pytest.fixture
def page(stack: Stack) -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium not found: `apt-get install chromium` (make test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        context = browser.new_context(viewport={"width": 1100, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not errors, f"the page raised: {errors}"


def test_the_page_needs_no_key_and_is_locked_down(stack: Stack) -> None:
    response = requests.get(f"{stack.url}/", timeout=10)
    script = requests.get(f"{stack.url}/static/app.js", timeout=10)

    assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]
    assert "<title>Oneiro</title>" in response.text
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]


def test_dream_in_the_browser(stack: Stack, page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(f"{stack.url}/")

    # A wrong key is refused with the API's own words; the right one is kept.
    expect(page.locator("#key-panel")).to_be_visible()
    page.fill("#key-input", "oneiro_not-a-key")
    page.click("#key-form button")
    expect(page.locator("#key-error")).to_contain_text("Unauthorized: send 'Authorization")
    page.fill("#key-input", stack.key)
    page.click("#key-form button")
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate("localStorage.getItem('oneiro.apiKey')") == stack.key

    # The presets are the API's, each with its thumbnail; one fills the parameters, and the
    # test then asks for a small, quick render.
    from shared.presets import PRESETS

    expect(page.locator("input[name=preset]")).to_have_count(len(PRESETS))
    expect(page.locator("input[name=preset][value=classic]")).to_be_checked()
    expect(page.locator("input[name=steps]")).to_have_value("50")
    thumbs = page.locator("#presets img.preset-thumb")
    expect(thumbs).to_have_count(len(PRESETS))
    # The thumbnail loads after its <img> is counted: wait for it (a loaded image has a width;
    # one the server refused never gets one, and the wait fails).
    page.wait_for_function(
        "() => { const e = document.querySelector(\"#presets img[src$='/deep.jpg']\");"
        " return e && e.complete && e.naturalWidth > 0; }",
        timeout=10_000,
    )
    page.check("input[name=preset][value=subtle]")
    expect(page.locator("input[name=steps]")).to_have_value("20")
    page.set_input_files("#image-input", str(CHELSEA))
    expect(page.locator("#input-thumb")).to_be_visible()
    page.click("#params summary")
    for name, value in {"steps": "16", "octaves": "5", "max_dim": "128", "seed": "5"}.items():
        page.fill(f"input[name={name}]", value)
    page.fill("input[name=layers]", "mixed3, mixed5")
    page.click("#submit")

    values: list[float] = []
    preview_at = result_at = None
    deadline = time.monotonic() + 180
    while result_at is None and time.monotonic() < deadline:
        values.append(page.eval_on_selector("#progress", "e => e.value"))
        if preview_at is None and page.is_visible("#preview"):
            preview_at = time.monotonic()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-running.png"), full_page=True)
        if page.is_visible("#result"):
            result_at = time.monotonic()
        time.sleep(0.05)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    job_id = page.get_attribute("#job-id", "title")
    assert job_id

    rising = sorted({v for v in values if 0 < v < 1})
    assert len(rising) >= 3, f"the bar did not rise through several values: {values}"
    assert values == sorted(values) and values[-1] == 1.0
    assert preview_at is not None and result_at is not None and preview_at < result_at
    assert page.get_attribute("#preview", "src").startswith("blob:")  # type: ignore[union-attr]
    width = page.eval_on_selector("#result", "e => e.complete && e.naturalWidth")
    assert width == 128
    download = page.locator("#download")
    expect(download).to_be_visible()
    assert download.get_attribute("download") == f"{job_id}.png"
    # The result's recipe: what the file carries, shown under it.
    expect(page.locator("#recipe-panel")).to_be_visible()
    page.click("#recipe-panel summary")
    recipe = json.loads(page.inner_text("#recipe"))
    assert recipe["params"]["seed"] == 5 and recipe["params"]["steps"] == 16
    assert recipe["params"]["preset"] == "subtle" and recipe["weights"] == "random"

    row = page.locator(f"#jobs li[data-job-id='{job_id}']")
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(row.locator(".status")).to_have_text("succeeded")
    expect(row.locator("img.thumb")).to_be_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-succeeded.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshots of the page: {shot}, {ARTIFACTS / 'web-running.png'}")

    # A long render, canceled from the page.
    page.fill("input[name=steps]", "1000")
    page.click("#submit")
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)
    long_id = page.get_attribute("#job-id", "title")
    assert long_id and long_id != job_id
    page.click("#cancel")
    expect(page.locator("#job-status")).to_have_text("canceled", timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()
    assert stack.wait_until_ended(long_id)["status"] == "canceled"
    expect(page.locator(f"#jobs li[data-job-id='{long_id}']")).to_have_attribute(
        "data-status", "canceled"
    )

    # Clicking a finished job in the list shows it again, result and all.
    page.click(f"#jobs li[data-job-id='{job_id}']")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#result")).to_be_visible()
    wait_for(lambda: page.is_visible("#download"), 10, "the download button")


def _open_with_key(page: object, stack: Stack) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    page.goto(f"{stack.url}/")
    page.fill("#key-input", stack.key)
    page.click("#key-form button")
    expect(page.locator("#app")).to_be_visible()


def test_a_form_error_goes_once_fixed_and_jobs_page_past_twelve_and_retry(
    stack: Stack, page: object
) -> None:
    from playwright.sync_api import Page, Response, expect

    assert isinstance(page, Page)
    refused: list[str] = []

    def note(response: Response) -> None:
        if response.status >= 400:
            refused.append(f"{response.status} {response.request.method} {response.url}")

    page.on("response", note)
    # More jobs than one page of the list holds, all canceled before any render.
    with stack.http() as http:
        made = []
        for seed in range(13):
            answer = http.post(
                f"{stack.url}/v1/jobs",
                files={"image": CHELSEA.read_bytes()},
                data={
                    "params": json.dumps({"steps": 1, "octaves": 1, "max_dim": 64, "seed": seed})
                },
                timeout=10,
            )
            assert answer.status_code == 202, answer.text
            made.append(answer.json()["id"])
            http.post(f"{stack.url}/v1/jobs/{made[-1]}/cancel", timeout=10)
        total = len(
            http.get(f"{stack.url}/v1/jobs", params={"limit": 100}, timeout=10).json()["jobs"]
        )
    _open_with_key(page, stack)

    # Paging: twelve, then all of them.
    rows = page.locator("#jobs li[data-job-id]")
    expect(rows).to_have_count(12)
    expect(page.locator("#more-jobs")).to_be_visible()
    while page.is_visible("#more-jobs"):
        page.click("#more-jobs")
        page.wait_for_timeout(300)
    expect(rows).to_have_count(total)
    expect(page.locator(f"#jobs li[data-job-id='{made[0]}']")).to_be_visible()
    # No 404 on load, no 409 for previews that cannot exist yet.
    assert refused == [], refused

    # A form error, then the field fixed: the error goes.
    page.set_input_files("#image-input", str(CHELSEA))
    page.click("#params summary")
    page.fill("input[name=layers]", "no_such_layer")
    page.click("#submit")
    expect(page.locator("#form-error")).to_be_visible()
    expect(page.locator("#form-error")).to_contain_text("params.layers")
    page.fill("input[name=layers]", "mixed3")
    expect(page.locator("#form-error")).to_be_hidden()
    refused.clear()

    # A canceled job, opened from the list, has a Retry button that runs it again.
    page.click(f"#jobs li[data-job-id='{made[0]}']")
    expect(page.locator("#job-status")).to_have_text("canceled")
    expect(page.locator("#retry")).to_be_visible()
    page.click("#retry")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#retry")).to_be_hidden()
    expect(page.locator("#result")).to_be_visible()
    assert stack.job(made[0])["status"] == "succeeded"
    # The finished job's thumbnail is there, and no preview was asked for before it existed.
    expect(page.locator(f"#jobs li[data-job-id='{made[0]}'] img.thumb")).to_be_visible()
    assert refused == [], refused


def test_the_docs_page_renders_with_nothing_but_the_api(stack: Stack, page: object) -> None:
    from playwright.sync_api import Page, Route, expect

    assert isinstance(page, Page)
    elsewhere: list[str] = []

    def same_origin_only(route: Route) -> None:
        # As offline: whatever is not the API itself never answers (Redoc came from unpkg.com).
        if route.request.url.startswith(f"{stack.url}/"):
            route.continue_()
        else:
            elsewhere.append(f"{route.request.resource_type} {route.request.url}")
            route.abort()

    page.route("**/*", same_origin_only)
    page.goto(f"{stack.url}/v1/docs")
    expect(page.locator("h1").first).to_contain_text("Oneiro")
    expect(page.get_by_text("/v1/jobs/{job_id}/cancel").first).to_be_attached()
    # All it asks of other hosts is Redocly's logo in the sidebar; without it the page still reads.
    assert elsewhere in ([], ["image https://cdn.redoc.ly/redoc/logo-mini.svg"])


def test_a_guide_and_a_mask_go_from_the_page_with_the_job(
    stack: Stack, page: object, tmp_path: Path
) -> None:
    import io
    import uuid

    from PIL import Image
    from playwright.sync_api import Page, expect

    from shared.db import create_db_engine, create_session_factory
    from shared.models import Job

    assert isinstance(page, Page)
    guide, mask = tmp_path / "guide.png", tmp_path / "mask.png"
    Image.linear_gradient("L").convert("RGB").save(guide)
    half = Image.new("L", (451, 300))  # the cat's shape: dream its left half
    half.paste(255, (0, 0, 225, 300))
    half.save(mask)
    _open_with_key(page, stack)
    page.set_input_files("#image-input", str(CHELSEA))
    page.click("#params summary")
    for name, value in {"steps": "2", "octaves": "2", "max_dim": "96", "seed": "5"}.items():
        page.fill(f"input[name={name}]", value)

    # Layers for a masked-out part without a mask: the API's words, on the page.
    page.click("#controls summary")
    page.fill("input[name=mask_layers]", "mixed2")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("needs a 'mask' file part")

    page.set_input_files("input[name=guide]", str(guide))
    page.set_input_files("input[name=mask]", str(mask))
    page.fill("input[name=guide_weight]", "0.5")
    page.click("#submit")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
    job_id = page.get_attribute("#job-id", "title")
    assert job_id

    engine = create_db_engine(stack.database_url)
    try:
        with create_session_factory(engine)() as session:
            job = session.get_one(Job, uuid.UUID(job_id))
            assert job.guide_key and job.guide_key.endswith("guide.png")
            assert job.mask_key and job.mask_key.endswith("mask.png")
            assert job.params["guide_weight"] == 0.5
            assert job.params["mask_layers"] == {"mixed2": 1.0}
    finally:
        engine.dispose()
    result = stack.http().get(f"{stack.url}/v1/jobs/{job_id}/result", timeout=10)
    assert Image.open(io.BytesIO(result.content)).size == (96, 64)


def test_a_video_is_dreamed_and_played_in_a_video_element(
    stack: Stack, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    from tests.utils import clip_bytes

    assert isinstance(page, Page)
    _open_with_key(page, stack)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clip_bytes((96, 64), frames=6, fps=12))
    page.set_input_files("#image-input", str(clip))
    expect(page.locator("#input-thumb")).to_be_hidden()
    page.click("#params summary")
    for name, value in {"steps": "2", "octaves": "1", "max_dim": "", "seed": "5"}.items():
        page.fill(f"input[name={name}]", value)
    page.click("#submit")

    video = page.locator("#result-video")
    expect(video).to_be_visible(timeout=180_000)
    expect(page.locator("#result")).to_be_hidden()
    job_id = page.get_attribute("#job-id", "title")
    assert stack.job(job_id)["kind"] == "video"
    # The browser decodes it: its metadata (size, duration) is read from the MP4.
    wait_for(
        lambda: page.eval_on_selector("#result-video", "e => e.readyState >= 1"),
        30,
        "the video's metadata",
    )
    width, duration = page.eval_on_selector("#result-video", "e => [e.videoWidth, e.duration]")
    assert width == 96 and abs(duration - 0.5) < 0.05
    assert page.get_attribute("#download", "download") == f"{job_id}.mp4"


def test_a_large_video_goes_from_the_page_as_a_resumable_upload(
    stack: Stack, page: object, tmp_path: Path
) -> None:
    import re

    from playwright.sync_api import Page, Request, expect

    from tests.utils import write_padded_clip

    assert isinstance(page, Page)
    _open_with_key(page, stack)
    # Over the page's 32 MB threshold: sent by tus-js-client (vendored, same origin) in 8 MiB
    # PATCHes, then named in the job request instead of its bytes.
    clip = tmp_path / "big.mp4"
    write_padded_clip(clip, 40 * 1024 * 1024, size=(96, 64), frames=3, audio=False)
    calls: list[str] = []

    def seen(request: Request) -> None:
        if "/v1/uploads" in request.url or request.url.endswith("/v1/jobs"):
            calls.append(f"{request.method} {request.url.removeprefix(stack.url)[:11]}")

    page.on("request", seen)
    page.set_input_files("#image-input", str(clip))
    page.click("#params summary")
    for name, value in {"steps": "1", "octaves": "1", "max_dim": "", "seed": "5"}.items():
        page.fill(f"input[name={name}]", value)
    page.click("#submit")

    expect(page.locator("#upload-text")).to_have_text(
        re.compile(r"Uploaded big\.mp4 \(41\.9 MB\)"), timeout=120_000
    )
    assert page.eval_on_selector("#upload-progress", "e => e.value") == 1
    expect(page.locator("#current")).to_be_visible(timeout=30_000)
    job_id = page.get_attribute("#job-id", "title")
    assert calls == ["POST /v1/uploads", *["PATCH /v1/uploads"] * 5, "POST /v1/jobs"]
    assert stack.job(job_id)["kind"] == "video"
    # tus-js-client dropped its note of the upload: it is the job's now.
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('tus::'))") == []


def test_a_zoom_takes_its_frames_and_zoom_and_a_queued_job_shows_where_it_stands(
    stack: Stack, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    # The one worker busy with a long job: the page's job waits, queued, first in line.
    with stack.http() as http, CHELSEA.open("rb") as image:
        long_id = http.post(
            f"{stack.url}/v1/jobs",
            files={"image": image},
            data={"params": json.dumps({"steps": 1000, "max_dim": 128})},
            timeout=10,
        ).json()["id"]
    wait_for(lambda: stack.job(long_id)["status"] == "running", 60, "the long job to start")
    _open_with_key(page, stack)
    for picker in ("guide", "mask"):  # TIFF, as the image's picker takes it
        accepted = page.get_attribute(f"input[name={picker}]", "accept") or ""
        assert "image/tiff" in accepted and ".tif" in accepted
    page.set_input_files("#image-input", str(CHELSEA))
    page.check("input[name=zoom]")
    page.fill("input[name=frames]", "3")
    page.fill("input[name=zoom_factor]", "1.1")
    page.click("#params summary")
    page.fill("input[name=max_dim]", "64")
    page.click("#submit")
    job_id = ""
    try:
        # As `oneiro status` says it; no job has ended on this stack yet, so no measured speed.
        expect(page.locator("#progress-text")).to_contain_text(
            re.compile(r"queued · position 1 · (start time not known yet|starts in about \d+:\d\d)")
        )
        job_id = page.get_attribute("#job-id", "title") or ""
        animation = stack.job(job_id)["params"]["animation"]
        assert (animation["frames"], animation["zoom"]) == (3, 1.1)
    finally:
        with stack.http() as http:
            for job in (job_id, long_id):
                if job:
                    http.post(f"{stack.url}/v1/jobs/{job}/cancel", timeout=10)
