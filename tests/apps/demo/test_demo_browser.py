"""The web demo in a real headless Chromium (Debian's chromium and chromium-driver; skipped, with
its reason, where they are missing): one end-to-end session and a nested gallery folder, whose
ranked results must match the JSON API's."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import warnings
from pathlib import Path

import pytest
from helpers import REPO, start_demo_script, stop_demo_script

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")


def _api_search(base: str, reference: str | None, caption: str, k: int, image: Path | None = None) -> list[dict]:
    if image is None:
        request = urllib.request.Request(base + "/api/search", method="POST",
                                         data=json.dumps({"reference": reference, "caption": caption, "k": k}).encode(),
                                         headers={"Content-Type": "application/json"})
    else:
        boundary = "clipcirtestboundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                 for name, value in (("caption", caption), ("k", str(k)))]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + image.read_bytes() + b"\r\n")
        request = urllib.request.Request(base + "/api/search", method="POST",
                                         data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(request, timeout=30))["results"]


def _skip_visibly(reason: str) -> None:
    """Skip, and also warn: pytest prints warnings even where skip reasons are not listed (no -rs)."""
    warnings.warn(reason, UserWarning, stacklevel=2)
    pytest.skip(reason)


def _browser():
    """A headless Debian Chromium through Debian's chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip_visibly("browser test skipped: selenium is not installed (pip install 'clip-cir[test]')")
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _skip_visibly("browser test skipped: no chromium and chromedriver on PATH "
                      "(bash .ci/install_browser.sh installs Debian's chromium and chromium-driver)")
    return webdriver, Service, binary, driver_path


@pytest.fixture
def browser(tmp_path):
    webdriver, Service, binary, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _artifact_dir() -> Path:
    path = Path(os.environ.get("CLIP_CIR_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def demo_script(synth_root, tmp_path):
    """The CIRR val demo as a separate `python demo/app.py`, started from another working directory
    with a relative --data-root (its URL)."""
    process, url = start_demo_script(synth_root, tmp_path, "--dataset", "cirr")
    yield url
    stop_demo_script(process)


class _Page:
    """The demo page in the browser, read as the browser tests need it."""

    def __init__(self, browser):
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser, self.wait = browser, WebDriverWait(browser, 20)

    def listed(self, selector: str) -> list[dict]:
        """data-* of the matching elements, read in one script (the page re-renders lists)."""
        return self.browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => Object.assign({}, e.dataset))", selector)

    def results_of_turn(self, turn: int) -> list[tuple[str, float]]:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-turn") == str(turn)
                        and d.find_element(By.ID, "results").get_attribute("data-state") == "done")
        return [(item["name"], float(item["score"])) for item in self.listed("#results li[data-name]")]

    def images_decoded(self, selector: str) -> int:
        """How many images under `selector` the browser really decoded (a 500 or 404 leaves
        naturalWidth at 0); waits until every one has finished loading."""
        script = ("const images = [...document.querySelectorAll(arguments[0])];"
                  "images.forEach(img => { img.loading = 'eager'; });"  # lazy ones below the fold too
                  "return images.every(img => img.complete) ? images.map(img => img.naturalWidth) : null")
        widths = self.wait.until(lambda d: d.execute_script(script, selector))
        assert widths and all(width > 0 for width in widths), (selector, widths)
        return len(widths)


def _same_as_api(shown: list[tuple[str, float]], api: list[dict]) -> None:
    assert [name for name, _ in shown] == [hit["name"] for hit in api]
    assert all(abs(score - hit["score"]) < 1e-6 for (_, score), hit in zip(shown, api))


def test_browser_end_to_end(browser, demo_script, engine, query):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = _Page(browser)
    wait, listed, results_of_turn, images_decoded = page.wait, page.listed, page.results_of_turn, page.images_decoded
    same_as_api = _same_as_api
    reference, caption = query
    find = browser.find_element

    live_server = demo_script
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "info-model").text == engine.clip.describe())
    assert find(By.ID, "info-combining").text == "element-wise sum"
    wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute("data-state") == "done")
    assert len(listed("#gallery li[data-name]")) == 48
    assert images_decoded("#gallery img") == 48

    # Pick the reference through the name filter, type the caption, search.
    find(By.ID, "filter").send_keys(reference)
    wait.until(lambda d: [item["name"] for item in listed("#gallery li[data-name]")] == [reference])
    find(By.CSS_SELECTOR, f'#gallery li[data-name="{reference}"] button').click()
    assert find(By.ID, "reference-name").text == reference
    find(By.ID, "caption").send_keys(caption)
    k = find(By.ID, "k")
    k.clear()
    k.send_keys("8")
    find(By.ID, "search-button").click()
    shown = results_of_turn(1)
    assert len(shown) == 8
    assert images_decoded("#results img") >= 8
    same_as_api(shown, _api_search(live_server, reference, caption, 8))

    # Multi-turn: click the best result, refine with a new caption.
    picked = shown[0][0]
    find(By.CSS_SELECTOR, f'#results li[data-name="{picked}"] button').click()
    assert find(By.ID, "reference-name").text == picked and find(By.ID, "caption").get_attribute("value") == ""
    find(By.ID, "caption").send_keys("is blue")
    find(By.ID, "search-button").click()
    same_as_api(results_of_turn(2), _api_search(live_server, picked, "is blue", 8))
    assert len(listed("#history li")) == 2

    # Bad queries show a message (the page's own check, then the server's) and leave the page working.
    find(By.ID, "caption").clear()
    find(By.ID, "search-button").click()
    status = find(By.ID, "status")
    assert "type a caption" in status.text.lower() and "error" in status.get_attribute("class")
    find(By.ID, "caption").send_keys("is blue")
    k.clear()
    k.send_keys("500")
    find(By.ID, "search-button").click()
    wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "error")
    assert status.text == "k must be from 1 to 100, got 500"
    k.clear()
    k.send_keys("8")

    # Upload a reference image from disk (a copy of the first reference).
    upload = engine.gallery.paths[reference]
    find(By.ID, "upload").send_keys(str(upload))
    assert find(By.ID, "reference-name").text == f"uploaded: {upload.name}"
    find(By.ID, "caption").clear()
    find(By.ID, "caption").send_keys(caption)
    find(By.ID, "search-button").click()
    same_as_api(results_of_turn(3), _api_search(live_server, None, caption, 8, image=upload))

    # One more turn from a result, with the whole gallery back, for the screenshot.
    find(By.ID, "filter").send_keys(Keys.CONTROL, "a")
    find(By.ID, "filter").send_keys(Keys.DELETE)  # typed, so the page sees an input event
    wait.until(lambda d: len(listed("#gallery li[data-name]")) == 48)
    find(By.CSS_SELECTOR, "#results li[data-name] button").click()
    find(By.ID, "caption").send_keys("has a red circle instead")
    find(By.ID, "search-button").click()
    results_of_turn(4)
    wait.until(lambda d: d.execute_script("return [...document.images].every(img => img.complete)"))
    screenshot = _artifact_dir() / "demo_screenshot.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


@pytest.fixture
def nested_photos(synth_root, tmp_path) -> Path:
    """A shop's photo folder: 12 synthetic CIRR val images spread over the folder itself, a
    subfolder and four subfolders two levels deep (8 of the 12 are there)."""
    folders = ["", "tops", "tops/long", "tops/short", "dresses/summer", "dresses/winter"]
    shop = tmp_path / "shop"
    for i, source in enumerate(sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:12]):
        copy = shop / folders[i % len(folders)] / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return shop


def test_browser_searches_a_nested_gallery_folder(browser, nested_photos, tmp_path):
    """`python demo/app.py --gallery-dir` on nested subfolders, in a real browser: every image at
    every depth is listed and decoded, and a search from a reference two levels deep shows results
    from the nested subfolders, ranked as the JSON API ranks them."""
    from selenium.webdriver.common.by import By

    names = sorted(path.relative_to(nested_photos).as_posix() for path in nested_photos.rglob("*.png"))
    assert len(names) == 12 and sum(name.count("/") == 2 for name in names) == 8
    process, url = start_demo_script(None, tmp_path, "--gallery-dir", str(nested_photos))
    try:
        page, find = _Page(browser), browser.find_element
        browser.get(url + "/")
        page.wait.until(lambda d: d.find_element(By.ID, "info-model").text == "cir-tiny-vit (random-init)")
        page.wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute("data-state") == "done")
        assert [item["name"] for item in page.listed("#gallery li[data-name]")] == names
        assert page.images_decoded("#gallery img") == 12

        reference = next(name for name in names if name.count("/") == 2)
        find(By.ID, "filter").send_keys(reference)
        page.wait.until(lambda d: [item["name"] for item in page.listed("#gallery li[data-name]")] == [reference])
        find(By.CSS_SELECTOR, f'#gallery li[data-name="{reference}"] button').click()
        assert find(By.ID, "reference-name").text == reference
        page.images_decoded("#reference-image")  # its URL is built by the page from the nested name
        find(By.ID, "caption").send_keys("has a red circle instead")
        k = find(By.ID, "k")
        k.clear()
        k.send_keys("8")
        find(By.ID, "search-button").click()
        shown = page.results_of_turn(1)
        _same_as_api(shown, _api_search(url, reference, "has a red circle instead", 8))
        assert len(shown) == 8 and {name for name, _ in shown} <= set(names)
        assert sum(name.count("/") == 2 for name, _ in shown) >= 4  # only 4 images are not that deep
        sources = browser.execute_script(
            "return [...document.querySelectorAll('#results li[data-name] img')].map(img => img.getAttribute('src'))")
        assert sources == [f"/images/{name}" for name, _ in shown]
        assert page.images_decoded("#results img") == 8
    finally:
        stop_demo_script(process)
