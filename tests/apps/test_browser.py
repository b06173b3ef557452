"""The web page used as a person would: a real headless Chromium types a prompt and presses Draw.

Needs Debian's chromium (/usr/bin/chromium) and the playwright Python client (its driver
only; no browser download). Without them the tests skip, unless GPTDRAW_REQUIRE_BROWSER=1
(CI sets it), where a missing browser is a failure.
"""

import importlib.util
import os
from pathlib import Path

import pytest

# The running server (module-scoped: this module starts its own) and its bounded wait.
from test_serve import served  # noqa: F401

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 120_000  # the longest any step waits for the page: a hang guard (a step takes a few seconds)


def browser_missing() -> str:
    """Why the browser test cannot run here, or ""."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python client is not installed (pip install playwright)"
    for name in ("gradio", "gradio_client"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install 'gptdraw[test]')"
    return ""


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    reason = browser_missing()
    if reason:
        if os.environ.get("GPTDRAW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GPTDRAW_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()



def open_page(page, url):
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_label("Prompt").wait_for()


def test_typing_a_prompt_and_pressing_draw_shows_the_drawing(browser_page, served):
    page = browser_page
    open_page(page, served.url)
    page.get_by_label("Prompt").fill("a small red circle in the top left")
    page.get_by_role("button", name="Draw").click()
    # The drawing appears while it fills in, then the results gallery and the status.
    page.locator("#drawing img").first.wait_for(state="visible")
    page.locator("#status").get_by_text("Done: 1 image").wait_for()
    assert page.locator("#results img").count() >= 1
    # Each result is shown whole (scaled to fit), not as a zoomed crop of its middle.
    fits = page.locator("#results img").evaluate_all("images => images.map(i => getComputedStyle(i).objectFit)")
    assert fits and all(fit == "contain" for fit in fits), fits
    source = page.locator("#drawing img").first.get_attribute("src")
    assert source and "gradio_api/file=" in source
    # The image the page shows is served by the app: fetch it as the browser would.
    response = page.request.get(source if source.startswith("http") else served.url.rstrip("/") + source)
    assert response.ok and response.body()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_explains_an_empty_prompt_and_warns_of_a_long_one(browser_page, served):
    page = browser_page
    open_page(page, served.url)
    page.get_by_role("button", name="Draw").click()
    page.get_by_text("the prompt is empty: write what to draw").first.wait_for()
    page.get_by_label("Prompt").fill("a large blue square on the right and a green circle in the center " * 3)
    page.get_by_role("button", name="Draw").click()
    page.locator("#status").get_by_text("longer than the caption budget").wait_for()
    page.locator("#status").get_by_text("Done: 1 image").wait_for()
