"""The course website (site/, `make site`) and the playground, checked in a real browser.

The site is built once per test session into build/site (every page afresh, as `make site` does). Playwright
drives Debian's Chromium, headless: every page loads without console errors, every image loads, every
internal link and anchor resolves, no page asks another host for anything, search works and the Japanese
summaries are drawn with a CJK font. The playground of notebook 10 runs in Voila on the bundled model and is
used as a person would: choose an image, type a prompt and a box, press Ground, and try wrong input.
Screenshots for review go to outputs/screenshots/.

Without a browser these tests skip and say how to install one; in a CI run (``CI=true``, ``1`` …) a missing browser
fails them.
"""

from __future__ import annotations

import functools
import html
import html.parser
import http.server
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from helpers.course.colab import REPO_URL, colab_badge_url
from helpers.grounding.progress import in_ci
from test_notebooks import SOLUTION_HEAD

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCREENSHOTS = ROOT / "outputs" / "screenshots"
BROWSER_INSTALL = "sudo apt-get install -y chromium fonts-noto-cjk"
SITE_INSTALL = "pip install -e '.[site]'"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
PAGES = ["index.html", "search.html", "genindex.html"] + [f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS]


def missing(what: str) -> None:
    """Skip on a learner's machine, fail in a CI run (``helpers.grounding.progress.in_ci``), saying what is missing
    and how to install it."""
    if in_ci():
        pytest.fail(f"{what} (CI={os.environ['CI']}: the browser tests must run)")
    pytest.skip(what)


def test_a_missing_browser_skips_for_a_learner_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium: sudo apt-get install"):
        missing("no Chromium: " + BROWSER_INSTALL)
    for ci in ("true", "1"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match=f"CI={ci}: the browser tests must run"):
            missing("no Chromium: " + BROWSER_INSTALL)
    monkeypatch.setenv("CI", "false")  # no CI run
    with pytest.raises(pytest.skip.Exception):
        missing("no Chromium: " + BROWSER_INSTALL)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def site() -> Path:
    """The built site (site/build.py, as `make site`)."""
    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_nb") is None:
        missing(f"the site needs Sphinx and myst-nb: {SITE_INSTALL}")
    spec = importlib.util.spec_from_file_location("site_build", ROOT / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(quiet=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def base_url(site: Path):
    """The site served over HTTP on the loopback address, as `python -m http.server -d build/site` does."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the system's packages, driven by Playwright."""
    if importlib.util.find_spec("playwright") is None:
        missing(f"the browser tests need Playwright: {SITE_INSTALL}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing(f"no Chromium found for the browser tests: {BROWSER_INSTALL}")
    fonts = subprocess.run(["fc-list", ":lang=ja", "family"], capture_output=True, text=True).stdout \
        if shutil.which("fc-list") else ""
    if "CJK" not in fonts:
        missing(f"no CJK font for the Japanese summaries: {BROWSER_INSTALL}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


class Visit:
    """A fresh browser page that records console errors, uncaught exceptions and requests to other hosts
    (which it blocks: the tests, like the site, must not depend on the network)."""

    def __init__(self, browser, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"{m.text} ({m.location.get('url')})")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]|data:|blob:)"), self._block)

    def _block(self, route) -> None:
        self.elsewhere.append(route.request.url)
        route.abort()

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def visit(browser):
    opened: list[Visit] = []

    def open_page(**size) -> Visit:
        opened.append(Visit(browser, **size))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


def shoot(page, name: str, **options) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), **options)
    return path


# --------------------------------------------------------------------------------------------- the site


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.images: list[str] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag == "a" and attrs.get("href") is not None:
            self._href, self._text = attrs["href"], []
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_every_notebook_is_a_page_listed_in_order_with_its_colab_link(site: Path) -> None:
    index = parsed(site / "index.html")
    listed = [href for href, _ in index.links if href.startswith("notebooks/")]
    order = list(dict.fromkeys(href.split("#")[0] for href in listed))
    assert order == [f"notebooks/{nb.stem}.html" for nb in NOTEBOOKS]
    for nb in NOTEBOOKS:
        title = nbformat.read(nb, as_version=4).cells[0].source.splitlines()[0][2:]
        page = parsed(site / "notebooks" / f"{nb.stem}.html")
        assert (colab_badge_url(nb.name), "Open in Colab") in page.links, f"{nb.name}: no Colab text link"
        assert (colab_badge_url(nb.name), "Open in Colab") in index.links
        assert title in (site / "notebooks" / f"{nb.stem}.html").read_text(encoding="utf-8")
        assert all(not src.startswith(("http:", "https:", "//")) for src in page.images), page.images


def test_the_home_page_carries_the_model_choice_table_from_the_readme(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- site: model choice -->")[1].split("<!-- /site: model choice -->")[0]
    row = next(line for line in table.splitlines() if line.startswith("| all notebooks run"))
    assert "all notebooks run top to bottom" in row and "all notebooks run top to bottom" in home
    assert "<table" in home and "offline (bundled model)" in home


def test_the_home_page_gives_the_repository_to_clone(site: Path) -> None:
    assert (REPO_URL, REPO_URL) in parsed(site / "index.html").links
    assert re.search(r'<link rel="shortcut icon" href="_static/favicon.svg"',
                     (site / "index.html").read_text(encoding="utf-8"))
    assert (site / "_static" / "favicon.svg").is_file()


def test_a_printout_is_one_block_and_a_picture_has_words(site: Path) -> None:
    """A cell's printout that came in several writes is one <pre> (as in Jupyter); a cell's picture has
    alternative text, not its hashed file name."""
    def lines(text: str) -> str:  # blank lines aside: merging may drop one between two writes
        return "\n".join(line for line in text.splitlines() if line.strip())

    merged = 0
    for nb in NOTEBOOKS:
        page = (site / "notebooks" / f"{nb.stem}.html").read_text(encoding="utf-8")
        blocks = [lines(html.unescape(re.sub(r"<[^>]+>", "", b))) for b in re.findall(r"<pre>(.*?)</pre>", page, re.S)]
        for cell in nbformat.read(nb, as_version=4).cells:
            streams = [o for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout"]
            if len(streams) > 1:
                merged += 1
                whole = lines("".join(o.text for o in streams))
                assert any(whole in block for block in blocks), \
                    f"{nb.name}: a printout split into blocks: {whole[:80]!r}"
        alts = re.findall(r'<img alt="([^"]*)"', page)
        assert all(alt and not alt.endswith(".png") for alt in alts), f"{nb.name}: {alts[:3]}"
    assert merged >= 5, "the notebooks have printouts in several writes, which this test is about"


@pytest.mark.parametrize("script", ["site/build.py", "tools/set_up_cells.py"])
def test_the_scripts_answer_help_and_refuse_stray_arguments_before_doing_anything(script: str, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").glob("*.ipynb")}
    run = [sys.executable, str(ROOT / script)]
    shown = subprocess.run([*run, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: python {script}")
    refused = subprocess.run([*run, "a", "b"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "error: unrecognized arguments" in refused.stderr
    assert list(tmp_path.iterdir()) == [] and not (ROOT / "--help").exists()
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").glob("*.ipynb")} == before


def test_the_build_keeps_its_sources_and_other_folders_clean(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("site_build", ROOT / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="inside .*site, the site's sources"):
        module.build(ROOT / "site" / "_out", quiet=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not an earlier build of the site"):
        module.build(tmp_path, quiet=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "index.html").write_text("<p>my own page</p>")  # any web site has one: not proof of a build
    with pytest.raises(ValueError, match="is not an earlier build of the site"):
        module.build(tmp_path, quiet=True)
    copy = tmp_path / "public"
    assert module.build(copy, quiet=True) == copy.resolve() and (copy / ".buildinfo").is_file()
    (copy / "stale.html").write_text("from an earlier build")
    module.build(copy, quiet=True)  # an earlier build is replaced as a whole
    assert (copy / "index.html").is_file() and not (copy / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "notes.txt", "public"]


def check_internal_links(site: Path, base_url: str, hrefs: list[str]) -> list[str]:
    """The internal links among ``hrefs`` (absolute URLs) whose file or anchor does not exist."""
    broken = []
    for href in hrefs:
        if not href.startswith(base_url):
            continue
        parts = urlsplit(href)
        target = site / unquote(parts.path.lstrip("/"))
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(href)
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parsed(target).ids:
            broken.append(href)
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly_in_the_browser(site: Path, base_url: str, visit, page: str) -> None:
    v = visit()
    response = v.page.goto(base_url + page, wait_until="load")
    assert response is not None and response.status == 200
    images = v.page.evaluate("Array.from(document.images, i => [i.currentSrc || i.src, i.complete && i.naturalWidth])")
    assert [src for src, width in images if not width] == [], "images that did not load"
    if page.startswith("notebooks/"):
        stored = sum("image/png" in out.get("data", {}) for cell in nbformat.read(
            ROOT / "notebooks" / Path(page).with_suffix(".ipynb").name, as_version=4).cells
            for out in cell.get("outputs", []))
        assert len(images) >= stored, "every figure stored in the notebook is on its page"
    hrefs = v.page.evaluate("Array.from(document.querySelectorAll('a[href]'), a => a.href)")
    assert check_internal_links(site, base_url, hrefs) == []
    assert v.errors == [], "console errors"
    assert v.elsewhere == [], "requests to other hosts"


def test_search_finds_the_notebooks(base_url: str, visit) -> None:
    v = visit()
    v.page.goto(base_url + "search.html?q=location+tokens", wait_until="load")
    results = v.page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=30_000)
    found = results.evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert any(href.startswith("notebooks/04_post_processing.html") for href in found), found
    assert v.errors == [] and v.elsewhere == []


def rendering_fonts(page, selector: str) -> set[str]:
    """The font families Chromium drew the text of ``selector``'s element with (the DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    assert node, f"no element {selector!r}"
    return {font["familyName"] for font in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]}


def test_notebook_04_shows_coloured_captions_figures_and_the_japanese_summary(base_url: str, visit) -> None:
    v = visit()
    v.page.goto(base_url + "notebooks/04_post_processing.html", wait_until="load")
    coloured = v.page.locator("span.grounded-caption span[style*='background-color']")
    assert coloured.count() >= 2
    background = coloured.first.evaluate("s => getComputedStyle(s).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")
    shoot(v.page, "04_post_processing.png")
    coloured.first.scroll_into_view_if_needed()
    shoot(v.page, "04_post_processing_caption.png")
    japanese = "section:has(> span[id='まとめ'])"  # Sphinx gives the section an ASCII id, the span the heading's
    summary = v.page.locator(japanese)
    summary.scroll_into_view_if_needed()
    assert summary.locator("h2").inner_text().startswith("まとめ")
    assert any("CJK" in family for family in rendering_fonts(v.page, japanese + " li p")), \
        f"the Japanese summary is not drawn with a CJK font: {BROWSER_INSTALL}"
    shoot(v.page, "04_post_processing_summary.png")


def test_home_page_screenshot(base_url: str, visit) -> None:
    v = visit()
    v.page.goto(base_url + "index.html", wait_until="load")
    assert v.page.locator("h1").first.inner_text().startswith("Kosmos-2 grounding course")
    assert v.page.locator("article section#the-notebooks ol > li").count() == len(NOTEBOOKS)
    shoot(v.page, "home.png", full_page=True)


# --------------------------------------------------------------------------------------------- playground

PLAYGROUND_NOTEBOOK = """\
from helpers import Playground, load
model, processor = load()
playground = Playground(model, processor)
playground.widget"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def playground_url(browser, tmp_path_factory: pytest.TempPathFactory):
    """Notebook 10's playground on the bundled model, served by Voila as a page of its own."""
    if importlib.util.find_spec("voila") is None:
        missing(f"the playground test needs Voila: {SITE_INSTALL}")
    folder = tmp_path_factory.mktemp("playground")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PLAYGROUND_NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "playground.ipynb")
    port = free_port()
    log = (folder / "voila.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", "playground.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1"], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            if server.poll() is not None:
                pytest.fail(f"Voila stopped: {(folder / 'voila.log').read_text()}")
            try:
                urllib.request.urlopen(url + "api", timeout=1)
                break
            except urllib.error.HTTPError:  # an answer, whatever it says: the server is up
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:  # Voila and its kernel together (its own shutdown waits for the kernel, seconds longer)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


class PlaygroundPage:
    """The playground's widgets in the page, found the way a person finds them: by their labels."""

    def __init__(self, page) -> None:
        self.page = page
        self.button = page.get_by_role("button", name="Ground")
        self.image = page.get_by_label("image", exact=True)
        self.prompt = page.get_by_label("prompt", exact=True)
        self.use_box = page.get_by_role("checkbox", name="use a box")
        self.upload = page.locator("button.widget-upload")
        self.picture = page.locator("img.widget-image")
        self.caption = page.locator(".widget-html-content")

    def box_field(self, name: str):
        return self.page.get_by_label(name, exact=True)

    def choose_file(self, **file) -> None:
        """Press the upload button and pick a file in the browser's file chooser."""
        with self.page.expect_file_chooser() as chooser:
            self.upload.click()
        chooser.value.set_files(files=[file])

    def type_box(self, box) -> None:
        for name, value in zip(("x0", "y0", "x1", "y1"), box):
            field = self.box_field(name)
            field.fill(f"{value:.3f}")
            field.press("Enter")

    def picture_png(self) -> bytes:
        return self.picture.screenshot()

    def press_ground(self) -> str:
        """Press the button and wait for the caption to change; return its new HTML."""
        before = self.caption.inner_html()
        self.button.click()
        self.page.wait_for_function("([el, old]) => el.innerHTML !== old",
                                    arg=[self.caption.element_handle(), before], timeout=60_000)
        return self.caption.inner_html()


def test_the_playground_in_the_browser(playground_url: str, visit) -> None:
    from playwright.sync_api import expect

    from helpers.world.scenes import character_illustration

    v = visit(width=1100, height=900)
    v.page.goto(playground_url, wait_until="load")
    ui = PlaygroundPage(v.page)
    ui.button.wait_for(timeout=180_000)  # the kernel starts and loads the model first
    ui.picture.wait_for()
    v.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=ui.picture.element_handle())
    expect(ui.caption).to_have_text("Press Ground.")
    first_picture = ui.picture_png()

    # a caption of the snowman drawing
    ui.image.select_option("snowman by a fire")
    ui.prompt.fill("<grounding> An image of")
    caption = ui.press_ground()
    assert "grounded-caption" in caption and "⚠" not in caption
    coloured = ui.caption.locator("span[style*='background-color']")
    assert coloured.count() >= 1, caption
    snowman = ui.picture_png()
    assert snowman != first_picture  # the answer's boxes are drawn

    # a question about a box of ours: Kumo's, typed into the fields
    kumo = next(obj for obj in character_illustration().objects if obj.name == "Kumo")
    ui.image.select_option("Kumo and a square")
    expect(ui.caption).to_have_text("Press Ground.")  # a new image is shown as it is, until the button
    ui.prompt.fill("<grounding> Question: What is<phrase> this character</phrase>? Answer:")
    ui.use_box.check()
    ui.type_box(kumo.box)
    answer = ui.press_ground()
    assert "Answer:" in ui.caption.inner_text() and "⚠" not in answer
    assert ui.picture_png() != snowman
    shoot(v.page, "playground.png", full_page=True)

    # wrong input: a clear message in the page each time, and the playground keeps working
    ui.prompt.fill("")
    ui.press_ground()
    assert "⚠ prompt must be a non-empty str" in ui.caption.inner_text()
    ui.prompt.fill("<grounding><phrase> It</phrase> is")
    ui.type_box((kumo.box[0], kumo.box[1], kumo.box[0], kumo.box[3]))
    ui.press_ground()
    assert "has no area: expected x0 < x1 and y0 < y1" in ui.caption.inner_text()
    ui.choose_file(name="notes.txt", mimeType="text/plain", buffer=b"not a picture")
    expect(ui.caption).to_contain_text("⚠ could not use the upload 'notes.txt': the given bytes is not an image")
    shoot(v.page, "playground_bad_upload.png", full_page=True)
    ui.type_box(kumo.box)
    again = ui.press_ground()
    assert "grounded-caption" in again and "⚠" not in again
    # Voila's page template asks a CDN for a style sheet (Font Awesome); blocked here, it changes nothing in use
    assert [e for e in v.errors if not any(url in e for url in v.elsewhere)] == []


# --------------------------------------------------------------------------------------------- folded solutions


class _Folds(html.parser.HTMLParser):
    """The text and the number of pictures inside each top-level ``<details>`` of a page, and the text outside."""

    def __init__(self) -> None:
        super().__init__()
        self.folds: list[list[str]] = []
        self.pictures: list[int] = []
        self.outside: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "details":
            if self._depth == 0:
                self.folds.append([])
                self.pictures.append(0)
            self._depth += 1
        elif tag == "img" and self._depth:
            self.pictures[-1] += 1

    def handle_endtag(self, tag) -> None:
        if tag == "details":
            self._depth -= 1

    def handle_data(self, data) -> None:
        (self.folds[-1] if self._depth else self.outside).append(data)


def test_each_exercise_solution_is_folded_behind_the_toggle_its_exercises_heading_names(site: Path) -> None:
    """Every solution cell, code and output, is inside its own <details> (closed until clicked) whose toggle
    reads "Show the solution", the words the Exercises heading tells the learner to click; nothing else is folded."""
    for nb in NOTEBOOKS:
        cells = nbformat.read(nb, as_version=4).cells
        solutions = [c for c in cells if c.cell_type == "code" and c.source.startswith(SOLUTION_HEAD)]
        text = (site / "notebooks" / f"{nb.stem}.html").read_text(encoding="utf-8")
        assert not re.search(r"<details[^>]*\bopen\b", text), f"{nb.name}: a fold is open from the start"
        page = _Folds()
        page.feed(text)
        assert len(page.folds) == len(solutions) >= 2, f"{nb.name}: {len(page.folds)} folds, {len(solutions)} solutions"
        outside = "".join(page.outside)
        assert SOLUTION_HEAD not in outside, f"{nb.name}: a solution shows outside its fold"
        heading = next(c.source for c in cells if c.cell_type == "markdown" and "## Exercises" in c.source)
        for cell, fold, pictures in zip(solutions, page.folds, page.pictures):
            fold = "".join(fold)
            toggle = fold.strip().splitlines()[0]
            assert toggle == "Show the solution" and f"*{toggle}*" in heading, (nb.name, toggle)
            assert cell.source.strip() in fold, f"{nb.name}: the fold lacks the code of {cell.source[:80]!r}"
            printed = "".join(out.text for out in cell.outputs if out.output_type == "stream")
            first = next((line for line in printed.splitlines() if line.strip()), "")
            assert first in fold, f"{nb.name}: output {first[:60]!r} not folded"
            drawn = sum("image/png" in out.get("data", {}) for out in cell.outputs)
            assert pictures == drawn, f"{nb.name}: {pictures} pictures in the fold, the cell drew {drawn}"
