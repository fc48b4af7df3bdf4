"""The report in a real headless browser (Debian chromium + chromium-driver through selenium): it loads with no
console error and no network request, every figure has a size, and choosing a patient shows that patient."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = ("chromium", "chromedriver")
TOP_N = 6


@pytest.fixture(scope="session")
def browser_binaries() -> dict[str, str]:
    """Paths of Debian's chromium and its driver, installed with apt on a fresh machine (as root, under the
    shared apt lock); skipped, saying why, only where they are missing and cannot be installed."""
    found = {name: shutil.which(name) for name in CHROMIUM}
    if not all(found.values()):
        if os.geteuid() != 0:
            pytest.skip("chromium and chromium-driver are not installed and installing them needs root (apt-get)")
        install = "apt-get update -q && apt-get install -y -q chromium chromium-driver"
        done = subprocess.run(
            ["flock", "/tmp/apt.lock", "sh", "-c", install], capture_output=True, text=True, timeout=1200
        )
        assert done.returncode == 0, f"apt-get could not install chromium: {done.stderr[-2000:]}"
        found = {name: shutil.which(name) for name in CHROMIUM}
    assert all(found.values()), found
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def report_file(tiny_run, tmp_path_factory) -> Path:
    from multimodal.report import build_report

    out = tmp_path_factory.mktemp("browser") / "report.html"
    return build_report(
        store=tiny_run["store"],
        model_dir=tiny_run["model_dir"],
        explain_dir=tiny_run["explain_dir"],
        out=out,
        title="browser check",
        top_n=TOP_N,
    )


@pytest.fixture
def driver(browser_binaries):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look anything up
    options = webdriver.ChromeOptions()
    options.binary_location = browser_binaries["chromium"]
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=browser_binaries["chromedriver"]))
    try:
        yield browser
    finally:
        browser.quit()


def _requests(driver) -> list[str]:
    """URLs the page asked the network stack for (Chrome DevTools Network events of the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_report_in_headless_chromium(driver, report_file, tiny_run, tmp_path, record_property) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(report_file.as_uri())
    assert driver.title == "browser check"

    # no console error (a script error, a failed resource, a CSP violation would be SEVERE)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # no network request: only the file itself and its inline data: URIs
    requests = _requests(driver)
    assert requests and requests[0] == report_file.as_uri()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []

    # every figure is drawn with a size: PNGs decoded, SVGs laid out
    figures = driver.find_elements(By.CSS_SELECTOR, "figure")
    assert len(figures) >= 8
    for figure in figures:
        size = figure.size
        assert size["width"] > 0 and size["height"] > 0, figure.get_attribute("id")
    for image in driver.find_elements(By.CSS_SELECTOR, "figure img"):
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
    for svg in driver.find_elements(By.CSS_SELECTOR, "figure svg"):
        box = driver.execute_script("var b = arguments[0].getBBox(); return [b.width, b.height];", svg)
        assert box[0] > 0 and box[1] > 0, svg.get_attribute("aria-label")

    # hovering a beeswarm dot names the patient and the value (SVG <title> tooltip)
    dot = driver.find_element(By.CSS_SELECTOR, "#swarm-variants circle")
    tooltip = driver.execute_script("return arguments[0].querySelector('title').textContent", dot)
    contrib = pd.read_csv(tiny_run["explain_dir"] / "modality_contributions.tsv", sep="\t", index_col="patient_id")
    assert tooltip.split(":")[0] in contrib.index and " = " in tooltip and "attribution" in tooltip

    # choosing a patient shows that patient's view
    patients = sorted(contrib.index)
    chosen = patients[len(patients) // 2]
    assert driver.find_element(By.ID, "patient-id").text == patients[0]
    Select(driver.find_element(By.ID, "patient-select")).select_by_value(chosen)
    assert driver.find_element(By.ID, "patient-id").text == chosen
    summary = dict(
        zip(
            [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#patient-summary dt")],
            [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#patient-summary dd")],
            strict=True,
        )
    )
    risk = float(summary["predicted risk (log relative hazard)"])
    assert risk == pytest.approx(contrib.loc[chosen, "risk"], rel=5e-3)
    assert summary["fold"] == str(int(contrib.loc[chosen, "fold"]))
    rows = driver.find_elements(By.CSS_SELECTOR, "#patient-attributions tbody tr")
    assert 0 < len(rows) <= TOP_N
    bars = driver.find_elements(By.CSS_SELECTOR, "#patient-waterfall rect")
    assert len(bars) == len(rows) + 1  # top attributions and the rest
    modality_rows = driver.find_elements(By.CSS_SELECTOR, "#patient-modalities tbody tr")
    cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in modality_rows]
    shown = {c[0]: c[1] for c in cells}
    assert set(shown) >= {"variants", "expression"}
    for name, text in shown.items():
        expected = contrib.loc[chosen, name]
        assert (text == "n/a" and pd.isna(expected)) or float(text) == pytest.approx(expected, rel=5e-3, abs=1e-9)
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []  # nor did choosing

    screenshot = tmp_path / "report.png"
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    record_property("screenshot", str(screenshot))
    print(f"screenshot: {screenshot}")
