"""A real headless browser (Debian's chromium + chromium-driver through selenium) against a running
review server: upload a phantom, wait for the score, scroll slices, confirm a lesion, mark a missed
finding, give a scan verdict, and check the database. Screenshots go to tests/review/artifacts/
(and, with AEANOMALY_UPDATE_DOCS=1, the viewer's to docs/review_viewer.png for the README).

Skips, saying why, where selenium, chromium or chromedriver cannot be had (`make test` installs
them where it can: `make browser`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

pytest.importorskip("flask")

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "review_viewer.png"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,900"]


def _browser_or_skip(profile: str):
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'aeanomaly[web,test]')")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver_bin = shutil.which("chromedriver")
    if binary is None or driver_bin is None:
        pytest.skip("no headless browser: chromium and chromedriver must be on PATH "
                    "(Debian: apt-get install chromium chromium-driver; `make browser`)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    except WebDriverException as err:
        pytest.skip(f"chromium would not start under chromedriver: {str(err).splitlines()[0]}")


@pytest.fixture
def server(make_app):
    from werkzeug.serving import make_server

    app = make_app()
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield app, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="aeanomaly-chromium-")
    driver = _browser_or_skip(profile)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_review_in_a_real_browser(server, browser, abnormal_phantom):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select, WebDriverWait

    app, base = server
    db = app.extensions["aeanomaly_review"].db
    # a form post or a re-render can replace an element between finding it and reading it: such a
    # read is retried until the timeout, not failed (the CI run of stop 30 hit it after the verdict post)
    wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))
    ARTIFACTS.mkdir(exist_ok=True)

    browser.get(base + "/")
    name = browser.find_element(By.ID, "reviewer")
    name.clear()
    name.send_keys("Dr Selenium")
    browser.find_element(By.CSS_SELECTOR, "#reviewer-form button").click()
    wait.until(EC.presence_of_element_located((By.ID, "upload-file"))).send_keys(str(abnormal_phantom))
    browser.find_element(By.ID, "upload-btn").click()

    # the page polls while the scan is scored in the background, then shows the viewer
    summary = wait.until(EC.visibility_of_element_located((By.ID, "summary")))
    assert "abnormal" in browser.find_element(By.ID, "scan-label").text
    wait.until(lambda d: d.execute_script("const i=document.getElementById('ct');"
                                          "return i.complete && i.naturalWidth > 0"))
    assert abnormal_phantom.stem.split(".")[0] in summary.text or abnormal_phantom.stem.split(".")[0] in browser.page_source
    scan_id = int(browser.current_url.rstrip("/").split("/")[-1])
    n = db.scan(scan_id)["n_slices"]

    # scroll slices with the keyboard and the slider
    start = int(browser.find_element(By.ID, "slice-no").text)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_DOWN if start > 0 else Keys.ARROW_UP)
    moved = int(browser.find_element(By.ID, "slice-no").text)
    assert moved == (start - 1 if start > 0 else start + 1)
    assert f"/slice/{moved}.png" in browser.find_element(By.ID, "ct").get_attribute("src")
    body.send_keys(Keys.HOME)
    assert browser.find_element(By.ID, "slice-no").text == "0"
    body.send_keys(Keys.END)
    assert browser.find_element(By.ID, "slice-no").text == str(n - 1)
    Select(browser.find_element(By.ID, "window")).select_by_value("abdomen")
    assert "window=abdomen" in browser.find_element(By.ID, "ct").get_attribute("src")
    Select(browser.find_element(By.ID, "window")).select_by_value("lung")

    # jump to the first lesion and confirm it
    row = browser.find_element(By.CSS_SELECTOR, "#lesions tr[data-lesion]")
    lesion_id, lesion_z = int(row.get_attribute("data-lesion")), row.get_attribute("data-z")
    row.find_element(By.CSS_SELECTOR, "a.jump").click()
    assert browser.find_element(By.ID, "slice-no").text == lesion_z
    wait.until(lambda d: d.execute_script("const i=document.getElementById('heat');"
                                          "return i.complete && i.naturalWidth > 0"))
    browser.save_screenshot(str(ARTIFACTS / "viewer_lesion.png"))
    if os.environ.get("AEANOMALY_UPDATE_DOCS") == "1":
        browser.find_element(By.CSS_SELECTOR, "main").screenshot(str(DOCS_SHOT))
    row.find_element(By.CSS_SELECTOR, "button[data-verdict=confirm]").click()
    wait.until(lambda d: row.find_element(By.CSS_SELECTOR, ".verdict").text == "confirm")

    # mark a missed finding by clicking on the slice
    browser.find_element(By.ID, "mark-missed").click()
    stack = browser.find_element(By.ID, "stack")
    browser.execute_script("arguments[0].scrollIntoView()", stack)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element_with_offset(stack, -stack.size["width"] // 4,
                                                      -stack.size["height"] // 4).click().perform()
    wait.until(EC.visibility_of_element_located((By.ID, "missed-form")))
    browser.find_element(By.ID, "mf-note").send_keys("missed subpleural nodule")
    browser.find_element(By.ID, "mf-save").click()
    wait.until(lambda d: "missed subpleural nodule" in d.find_element(By.ID, "missed-list").text)
    browser.save_screenshot(str(ARTIFACTS / "viewer_missed.png"))

    # the scan verdict (a plain form post) and the worklist
    browser.find_element(By.ID, "verdict-confirm").click()
    wait.until(lambda d: "Dr Selenium" in d.find_element(By.ID, "reviews").text)
    browser.get(base + "/")
    assert "confirm" in browser.find_element(By.ID, "worklist").text
    browser.save_screenshot(str(ARTIFACTS / "worklist.png"))

    # what the browser did is in the database
    les = {l["lesion_id"]: l for l in db.lesions(scan_id)}
    assert (les[lesion_id]["verdict"], les[lesion_id]["reviewer"]) == ("confirm", "Dr Selenium")
    (missed,) = db.missed(scan_id)
    _, ny, nx = (n, *app.extensions["aeanomaly_review"].cache(db.scan(scan_id)).meta["shape"][1:])
    assert missed["slice"] == int(lesion_z) and missed["note"] == "missed subpleural nodule"
    assert 0.1 * ny < missed["y"] < 0.4 * ny and 0.1 * nx < missed["x"] < 0.4 * nx
    row = db.scan(scan_id)
    assert (row["verdict"], row["reviewer"]) == ("confirm", "Dr Selenium")


def test_browser_test_skips_with_a_reason_without_chromium(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver must be on PATH"):
        _browser_or_skip(tempfile.gettempdir())
