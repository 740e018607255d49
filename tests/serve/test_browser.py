"""End to end in headless Chromium (Debian `chromium`, driven by Playwright; no browser download needed).

Uploads an image on the tokenize page, runs a few-shot classification and a streamed chat turn, and checks what
each page shows, then an upload of a non-image and the error the page shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import png

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package `chromium` (see .ci/system-packages.txt)"),
]


@pytest.fixture()
def page(serve_runs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    from tessera.serve import create_app, serve_debug
    from tests.serve.live import live_server

    app = create_app(runs_dir=serve_runs, data_dir=tmp_path / "data", config=serve_debug())
    with live_server(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page()
            pg.set_default_timeout(30_000)
            pg.base_url = url
            yield pg
        finally:
            browser.close()


def _write(folder: Path, name: str, blob: bytes) -> str:
    path = folder / name
    path.write_bytes(blob)
    return str(path)


def test_tokenize_fewshot_and_chat_in_a_browser(page, tmp_path):
    url = page.base_url
    # Tokenize: upload, submit, see the grid, the reconstruction and the usage table.
    page.goto(f"{url}/tokenize")
    page.set_input_files("#image", _write(tmp_path, "photo.png", png((48, 40), seed=3)))
    page.click("#tokenize-submit")
    page.wait_for_selector("#tokenize-result")
    assert page.locator("#token-grid tr").count() == 8
    assert page.locator("#token-grid td").count() == 64
    assert "8x8 tokens" in page.inner_text("#token-summary")
    assert page.get_attribute("#reconstruction", "src").startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('reconstruction').naturalWidth") > 0  # the browser decoded it
    assert page.locator("#code-usage tr").count() >= 2

    # Few-shot: two named classes with two examples each, two queries.
    page.goto(f"{url}/fewshot")
    page.fill("#class_0_name", "stripes")
    page.set_input_files("#class_0_images", [_write(tmp_path, f"s{i}.png", png(seed=10 + i)) for i in range(2)])
    page.fill("#class_1_name", "dots")
    page.set_input_files("#class_1_images", [_write(tmp_path, f"d{i}.png", png(seed=20 + i)) for i in range(2)])
    page.set_input_files("#queries", [_write(tmp_path, f"q{i}.png", png(seed=30 + i)) for i in range(2)])
    page.click("#fewshot-submit")
    page.wait_for_selector("#fewshot-result")
    rows = page.locator("tr.prediction")
    assert rows.count() == 2
    for i in range(2):
        assert rows.nth(i).locator("td.predicted-class").inner_text().strip() in ("stripes", "dots")
    assert "p(stripes)" in page.inner_text("#predictions") and "q0.png" in page.inner_text("#predictions")

    # Chat: a streamed text turn, then a drawn image.
    page.goto(f"{url}/chat")
    page.fill("#prompt", "question: what colour is the circle? answer:")
    page.fill("#max_new_tokens", "8")
    page.click("#chat-submit")
    page.wait_for_function("document.getElementById('chat-status').textContent.startsWith('done')")
    assert page.locator("#chat-error").count() == 0
    page.fill("#prompt", "draw: a small blue square at the top left.")
    page.check("#draw")
    page.click("#chat-submit")
    page.wait_for_function("document.getElementById('chat-status').textContent.startsWith('done')")
    assert page.locator("#chat-images img.generated").count() == 1
    assert page.evaluate("document.querySelector('#chat-images img').naturalWidth") > 0

    # A file that is not an image: the page says so.
    page.goto(f"{url}/tokenize")
    page.set_input_files("#image", _write(tmp_path, "notes.png", b"this is text, not a picture"))
    page.click("#tokenize-submit")
    page.wait_for_selector("#error-message")
    assert "notes.png" in page.inner_text("#error-message") and "not an image" in page.inner_text("#error-message")
