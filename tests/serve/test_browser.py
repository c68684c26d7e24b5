"""The page in a real browser: Debian's headless Chromium driven by Playwright.

Nothing is downloaded: Playwright drives ``/usr/bin/chromium`` (Debian's package ``chromium``,
which ``.ci/run`` installs). Where it is absent the test skips and says so, unless
``VGKIT_REQUIRE_BROWSER=1`` (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from vgkit.serve import create_app

CHROMIUM = Path(os.environ.get("VGKIT_CHROMIUM", "/usr/bin/chromium"))
# the flags Chromium needs on a machine with no network: no sandbox (root in CI), no GPU,
# and none of the background connections a closed network refuses
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_path() -> Path:
    if CHROMIUM.is_file():
        return CHROMIUM
    why = (f"no Chromium at {CHROMIUM}: install Debian's package chromium "
           "(apt-get install chromium) or set VGKIT_CHROMIUM")
    if os.environ.get("VGKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VGKIT_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def server(grounder):
    """The app under uvicorn in a thread, on a free local port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(grounder), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture()
def page(browser_path, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(browser_path), headless=True,
            args=FLAGS, viewport={"width": 1100, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def photo(path: Path) -> Path:
    """A 160x120 PNG: noise with a red square and a blue disc."""
    rng = np.random.default_rng(7)
    a = rng.integers(60, 200, (120, 160, 3), dtype=np.uint8)
    a[20:60, 20:70] = (220, 30, 30)
    yy, xx = np.mgrid[:120, :160]
    a[(yy - 80) ** 2 + (xx - 110) ** 2 < 25 ** 2] = (30, 60, 220)
    Image.fromarray(a).save(path)
    return path


def test_upload_type_and_read_the_box(page, server, grounder, tmp_path):
    image = photo(tmp_path / "scene.png")
    page.goto(server)
    page.wait_for_function("document.getElementById('meta').textContent.includes('synthetic')")
    page.set_input_files("#image", str(image))
    page.fill("#phrase", "the red square")
    page.click("#go")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)",
                           timeout=60_000)
    assert page.text_content("#error") == ""
    box = json.loads(page.get_attribute("#box", "data-box") or "null")
    want = grounder.predict(image, "the red square")
    assert box == pytest.approx(list(want.box), abs=0.5)
    # the box drawn over the image is the same box, in the image's own pixels
    rect = [float(page.get_attribute("#rect", k) or "nan") for k in ("x", "y", "width", "height")]
    assert rect == pytest.approx(list(want.xywh), abs=0.5)
    words = page.eval_on_selector_all("#words .word", "els => els.map(e => e.textContent)")
    assert [w.split()[0] for w in words] == want.words
    # the figure (box + heat map) has loaded: the image decoded to its real size (an image
    # decodes after the page says done: wait for it, as a person looking at it would)
    page.wait_for_function("document.getElementById('figure').complete && "
                           "document.getElementById('figure').naturalWidth > 0", timeout=30_000)
    size = page.eval_on_selector("#figure", "e => [e.complete, e.naturalWidth, e.naturalHeight]")
    fig = grounder.figure(image, "the red square", want)
    assert size == [True, fig.size[0], fig.size[1]]
    assert float(page.text_content("#ms") or "nan") > 0
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1000


def test_errors_show_on_the_page(page, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    page.goto(server)
    page.set_input_files("#image", str(bad))
    page.fill("#phrase", "the red square")
    page.click("#go")
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
    assert page.text_content("#error").startswith("400: cannot decode image 'broken.png'")
    page.set_input_files("#image", str(photo(tmp_path / "ok.png")))
    page.fill("#phrase", "   ")
    page.click("#go")
    page.wait_for_function("document.getElementById('error').textContent.startsWith('422')")
    assert "the phrase is empty" in page.text_content("#error")
    assert page.is_hidden("#result")


def test_pick_a_dataset_image(page, server, grounder, tiny_run):
    page.goto(server)
    page.wait_for_function("document.getElementById('example').options.length > 1")
    page.select_option("#example", index=1)
    phrase = page.input_value("#phrase")
    assert phrase  # the example's own phrase is filled in
    name = page.eval_on_selector("#example", "e => e.options[e.selectedIndex].textContent")
    page.click("#go")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
    box = json.loads(page.get_attribute("#box", "data-box") or "null")
    want = grounder.predict(tiny_run.root / name, phrase)
    assert box == pytest.approx(list(want.box), abs=0.5)
    # the dataset image is fetched from the server after the answer: it loads, not breaks
    page.wait_for_function("document.getElementById('picture').complete && "
                           "document.getElementById('picture').naturalWidth > 0", timeout=30_000)
