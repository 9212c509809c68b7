"""The report in a real browser (issue 17): headless Chromium opens the site from ``file://``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when apt works) and ``selenium``
(the ``dev`` extra); without them the test skips with one line. It checks the table rows and numbers against the
leaderboard, that every plot and overlay image loads (natural width > 0), that clicking a header sorts the rows,
that a hostile model name shows as text and runs nothing, that the page logs no error (a blocked file or script
would), and saves screenshots.

``python tests/leaderboard/test_report_browser.py SITE_DIR OUT.png`` takes the README's screenshot of a built site.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> tuple[str, str] | None:
    binary = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def start_driver(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = _browser()
    options = Options()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)  # explicit paths: nothing is downloaded


def full_page_screenshot(drv, path: Path, max_height: int = 12000) -> None:
    height = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(drv.get_window_size()["width"], min(max_height, height + 40))
    drv.save_screenshot(str(path))


def _wait_loaded(drv) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        )
    )


def _images(drv) -> list[tuple[str, int]]:
    return drv.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")


def _tables(drv) -> list[list[list[str]]]:
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('table.leaderboard')).map(t => Array.from(t.rows).map("
        "r => Array.from(r.cells).map(c => c.innerText.replace(/\\s+/g, ' ').trim())))"
    )


def _errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def browser():
    if _browser() is None:
        pytest.skip("no browser: apt-get install chromium chromium-driver (Debian) to run the report in Chromium")
    pytest.importorskip("selenium", reason="selenium not installed (pip install selenium, the dev extra)")
    drv = start_driver()
    yield drv
    drv.quit()


@pytest.mark.slow
def test_report_site_in_headless_chromium(browser, tmp_path_factory, tmp_path, request):
    from test_report import HOSTILE, cli, demo_results, expected_cells

    from covar_harness.leaderboard import tables as lb

    data = request.getfixturevalue("covar_shapes_data")  # only once a browser is known to be there (no skip cost)
    out, maps, data = demo_results(tmp_path_factory.mktemp("report-demo"), data)
    site = tmp_path / "site"
    code, _, err = cli("report", out, "--out", site, "--maps", maps, "--data-dir", data)
    assert code == 0, err
    shots = tmp_path / "screenshots"
    shots.mkdir()

    browser.get((site / "index.html").as_uri())
    _wait_loaded(browser)
    tables = lb.build_tables(lb.collect(out).records)
    shown = _tables(browser)
    assert len(shown) == len(tables)
    for table, rows in zip(tables, shown):
        assert rows[0] == table.columns
        assert rows[1:] == expected_cells(table)
    images = _images(browser)
    assert len(images) >= 3 and all(width > 0 for _, width in images), images
    assert browser.execute_script("return document.querySelectorAll('img[src=x], [onerror], [onload]').length") == 0
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.leaderboard tbody th')).map(c => c.textContent)"
    )
    assert HOSTILE in names  # the markup is text on the page, not an element
    full_page_screenshot(browser, shots / "index.png")

    # sorting: click "Bg-varied" in the accuracy table: high to low, then low to high; rows move whole
    header = browser.find_elements("css selector", "table.leaderboard")[0].find_elements("css selector", "thead th")
    col = [h.text.replace("\n", " ") for h in header].index("Bg-varied")
    header[col].find_element("css selector", "button").click()

    def column():
        rows = _tables(browser)[0][1:]
        return [(r[0], float(r[col])) for r in rows if r[col] != "-"]

    first = column()
    assert [v for _, v in first] == sorted((v for _, v in first), reverse=True)
    assert first[-1][0] == "demo/shapes-shortcut"  # 0.4% when its background changes: the planted shortcut
    assert header[col].get_attribute("aria-sort") == "descending"
    header[col].find_element("css selector", "button").click()
    assert [v for _, v in column()] == sorted(v for _, v in first)
    assert header[col].get_attribute("aria-sort") == "ascending"
    by_row = {r[0]: r for r in _tables(browser)[0][1:]}
    assert by_row == {r[0]: r for r in expected_cells(tables[0])}  # every row still whole
    assert _errors(browser) == []

    # a gallery page: every overlay loads
    browser.get((site / "pairs" / "demo__shapes-shortcut" / "covar-shapes__bg_varied.html").as_uri())
    _wait_loaded(browser)
    images = _images(browser)
    assert images and all(width > 0 for _, width in images), images
    assert browser.find_elements("css selector", ".card")
    full_page_screenshot(browser, shots / "pair.png")
    assert _errors(browser) == []
    assert (shots / "index.png").stat().st_size > 10_000 and (shots / "pair.png").stat().st_size > 10_000
    if os.environ.get("COVAR_REPORT_SCREENSHOTS"):  # keep them (CI artifacts)
        keep = Path(os.environ["COVAR_REPORT_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copyfile(shot, keep / shot.name)


def main(argv: list[str]) -> int:
    """The README screenshot: the top of ``SITE_DIR/index.html`` at 1400 x HEIGHT pixels."""
    if len(argv) not in (2, 3) or _browser() is None:
        print(
            "usage: python tests/leaderboard/test_report_browser.py SITE_DIR OUT.png [HEIGHT]"
            " (needs chromium and chromium-driver)",
            file=sys.stderr,
        )
        return 2
    drv = start_driver(1400, int(argv[2]) if len(argv) == 3 else 1250)
    try:
        drv.get((Path(argv[0]).resolve() / "index.html").as_uri())
        _wait_loaded(drv)
        drv.save_screenshot(argv[1])
    finally:
        drv.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
