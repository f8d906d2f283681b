"""The page at /: self-contained (no external scripts, styles, fonts or images; a CSP that forbids
them), and usable in a browser: headless Chromium (Debian's, driven by Playwright) opens it, fills in a
prompt, generates, finds the image in the gallery with its parameters, and runs a compare grid. The
same at a phone's width. Also writes the screenshot docs/serve.png is made from (SDTUNE_SCREENSHOT)."""

import os
import re
import shutil

import pytest

from serve_client import BASE

CHROMIUM = shutil.which("chromium")


def test_the_page_is_self_contained(serve):
    server = serve("--model", BASE)
    status, page, headers = server.request("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    # Nothing fetched from elsewhere: no URL with a scheme or a protocol-relative one in src/href.
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page), "an external asset"
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page)
    assert "<script src" not in page and "<link" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("viewport", [(1280, 900), (390, 844)], ids=["desktop", "phone"])
def test_a_browser_generates_and_compares(serve, tmp_path, viewport):
    from playwright.sync_api import sync_playwright

    server = serve("--model", BASE, "--api-key-env", "SDTUNE_PAGE_KEY", env={"SDTUNE_PAGE_KEY": "page-token"})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.on("dialog", lambda d: d.accept("page-token"))  # the page asks for the token once
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("#sampler option", state="attached", timeout=30000)
        page.fill("#prompt", "a blue triangle")
        page.fill("#steps", "4")
        page.fill("#width", "64")
        page.fill("#height", "64")
        page.fill("#seed", "5")
        page.select_option("#sampler", "Euler")
        page.click("#go")
        page.wait_for_selector("#gallery figure img", timeout=60000)
        caption = page.inner_text("#gallery figcaption")
        assert caption.startswith("a blue triangle") and "Seed: 5" in caption and "Sampler: Euler" in caption
        href = page.get_attribute("#gallery figure a", "href")
        assert href.startswith("data:image/png;base64,") and page.get_attribute("#gallery figure a", "download")
        if viewport[0] < 500:  # a phone: the form and the gallery stack, nothing wider than the screen
            box = page.locator("main").bounding_box()
            assert box["width"] <= viewport[0] + 1, box
        else:
            shot = os.environ.get("SDTUNE_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
        # Compare: prompts × seeds, as `sdtune grid` lays them out.
        page.click("#tab-compare")
        page.fill("#prompts", "Bill Gates\nBill Gates ninja portrait")
        page.fill("#seeds", "1, 2")
        page.click("#go")
        page.locator("table.grid tr:nth-child(3) td:nth-child(3) img").wait_for(state="attached", timeout=60000)
        assert page.locator("table.grid img").count() == 4
        assert page.inner_text("table.grid").count("Bill Gates") == 2
        assert not errors, errors
        browser.close()
