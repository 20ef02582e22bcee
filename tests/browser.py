"""A real browser for the tests that look at what people see: Debian's chromium, driven by
chromium-driver through Selenium, with every request off this machine made to fail (a proxy
on a closed port), so a page that needs the network shows it."""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

WIDTH, HEIGHT = 1280, 800


@contextlib.contextmanager
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_path, "the browser tests need chromium and chromium-driver " \
        "(apt-get install chromium chromium-driver; .ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                # loopback stays direct (chromium never proxies it); the rest goes nowhere
                f"--window-size={WIDTH},{HEIGHT}", "--proxy-server=http://127.0.0.1:9"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        # the viewport itself, not the window around it
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def requests_made(driver) -> list[str]:
    "Every resource the page loaded, by URL (the page itself not included)."
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")


def images_loaded(driver) -> tuple[int, int]:
    "How many images the page has, and how many of them loaded."
    return tuple(driver.execute_script(
        "const i = Array.from(document.images);"
        "return [i.length, i.filter(x => x.complete && x.naturalWidth > 0).length]"))


def box(driver, css: str) -> dict:
    "The element's box in the viewport (top, bottom, left, right, in CSS pixels)."
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}", css)
