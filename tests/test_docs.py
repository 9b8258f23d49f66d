"""The manual (docs/, mkdocs.yml) builds with --strict, so a broken link or anchor, a page left
out of the nav or a generated part that no longer renders fails here; its generated reference
says what the code says; the built site needs no network; the README's links lead somewhere."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dev.docs_hooks import env_name, settings_table
from shared.settings import Settings
from tests.utils import ROOT, chromium_path

# Where the variables that are not Settings fields are read.
READERS = ("api", "worker", "shared", "client", "dev", "tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manual, built as `make docs` builds it, into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}"
    return out


def text_of(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text())


def test_every_setting_has_a_description() -> None:
    fields = Settings.model_fields.items()
    missing = [field for field, info in fields if not (info.description or "").strip()]
    assert not missing, f"give these Settings fields a Field(description=...): {missing}"


def test_the_settings_reference_lists_every_setting_with_its_description(site: Path) -> None:
    page = text_of(site / "reference" / "settings" / "index.html")
    for field, info in Settings.model_fields.items():
        assert f"\n{env_name(field)}\n" in page, f"{env_name(field)} is not in the reference"
        first_words = " ".join((info.description or "").split()[:3])
        assert re.sub(r"`", "", first_words) in page, f"{env_name(field)}: description missing"


def test_a_field_without_a_description_stops_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings.model_fields["queue"], "description", "")
    with pytest.raises(ValueError, match="queue has no Field"):
        settings_table()


def test_the_http_reference_has_every_operation_of_the_served_document(site: Path) -> None:
    from dev.docs_hooks import openapi_document

    page = text_of(site / "reference" / "http-api" / "index.html")
    document = openapi_document()
    for path, item in document["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in page
    for schema in document["components"]["schemas"]:
        assert f"\n{schema}" in page


def test_the_hand_written_variables_are_read_somewhere() -> None:
    page = (ROOT / "docs" / "reference" / "settings.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \|", page, flags=re.MULTILINE)
    assert rows, "the table of variables read by one program each is gone"
    code = "\n".join(
        path.read_text()
        for package in READERS
        for path in (ROOT / package).rglob("*.py")
        if path.name != Path(__file__).name
    )
    unread = [name for name in rows if name not in code]
    assert not unread, f"docs/reference/settings.md names variables nothing reads: {unread}"


def test_the_built_site_works_offline(site: Path) -> None:
    # No web font, stylesheet or script from elsewhere: the pages read the same without a network.
    for page in site.rglob("*.html"):
        html = page.read_text()
        remote = re.findall(r'<(?:link|script)[^>]+(?:href|src)="(?:https?:)?//[^"]+"', html)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html
    # Search is the site's own index and worker, not a service.
    index = json.loads((site / "search" / "search_index.json").read_text())
    assert any("ONEIRO_WEIGHTS" in doc["text"] for doc in index["docs"])
    assert list((site / "assets" / "javascripts" / "workers").glob("search.*.js"))


@pytest.fixture
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on a free local port, as a static server would serve it."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_search_finds_pages_in_a_browser_with_no_network(served: str) -> None:
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium not found: `apt-get install chromium` (make test does it)")
    from playwright.sync_api import Route, sync_playwright

    elsewhere: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(served):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", local_only)
            page.goto(served + "/")
            page.click("input[data-md-component=search-query]")
            page.keyboard.type("retention")
            page.wait_for_selector(".md-search-result__item", timeout=30_000)
            titles = page.locator(".md-search-result__item h1").all_inner_texts()
        finally:
            browser.close()
    assert "When things break" in titles
    assert not elsewhere, f"the site asked for {elsewhere}"


def test_the_readme_links_and_picture_are_there() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert "docs/images/chelsea-dream.jpg" in local
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert len(readme.splitlines()) <= 150, "README.md is a front page: the rest goes in docs/"


def test_the_front_page_says_what_a_newcomer_needs_first() -> None:
    readme = (ROOT / "README.md").read_text()
    needed = {
        "the data flow in one diagram": "```mermaid",
        "make run": "make run",
        "make test": "make test",
        "try it with curl": "curl -s",
        "try it with oneiro": "oneiro submit",
        "try it on the web page": "http://127.0.0.1:8000/",
        "offline weights": "ONEIRO_WEIGHTS=../shared/models/",
        "how long the tests take": "minutes",
        "which Redis database they use": "database 0",
        "that they may install Chromium": "Chromium",
        "how to run a part": "PYTEST_ARGS=",
    }
    missing = [what for what, text in needed.items() if text not in readme]
    assert not missing, f"README.md does not say: {missing}"
    manual = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert len(set(manual)) >= 8, "the front page links into the manual"


def test_the_strict_build_fails_on_a_broken_link_a_bad_anchor_or_an_unlisted_page() -> None:
    # What makes `mkdocs build --strict` (make docs, the site fixture) fail on each: a warning.
    config = (ROOT / "mkdocs.yml").read_text()
    validation = config.split("validation:", 1)[1].split("\n\n", 1)[0]
    for check in ("omitted_files", "unrecognized_links", "anchors", "absolute_links"):
        assert re.search(rf"^  {check}: warn$", validation, re.M), check
    assert re.search(r"^strict: true$", config, re.M)


def test_no_code_cites_a_design_file_the_repo_does_not_have() -> None:
    citing = [
        str(path.relative_to(ROOT))
        for package in (*READERS, "migrations", "mutation", "benchmarks")
        for path in (ROOT / package).rglob("*.py")
        if "DESIGN.md" in path.read_text() and path.name != Path(__file__).name
    ]
    assert not citing, f"cite docs/internals/architecture.md instead of DESIGN.md: {citing}"
