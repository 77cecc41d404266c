"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against the real server (gunicorn, TLS as it runs in production).

An operator logs in, sees the fleet grid, opens 千代田区 from its cell, revokes a terminal
(confirmation page, then the POST with its CSRF token), and logs out.  Screenshots of the
fleet and the municipality page are saved under the test's tmp dir (paths printed; run with
``-s`` to see them).  Chromium trusts the server's certificate by its public key
(``--ignore-certificate-errors-spki-list``), not by ignoring certificate errors.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server.blobs import BlobStore
from server.enrollment import find_terminal
from server.keys import load_signing_key
from server.operators import add_operator
from server.storage import Storage
from tests.server.client import ServerProcess
from tests.server.conftest import API_A, api_init_data
from tests.server.test_dashboard import make_day

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "correct horse battery staple"


def spki_hash(cert_path: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate: what Chromium pins."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


@pytest.fixture
def site(tmp_path):  # type: ignore[no-untyped-def]
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    config = api_init_data(tmp_path / "srv", tls=True)
    storage = Storage(config.database_url)
    services = type(
        "Services",
        (),
        {
            "storage": storage,
            "blobs": BlobStore(config.blob_dir),
            "signing_key": load_signing_key(config.signing_key_path),
        },
    )
    day = make_day(services, datetime.now(UTC))
    add_operator(storage, "tanaka", PASSWORD, now=datetime.now(UTC))  # the default (real) KDF
    server = ServerProcess(config.data_dir, log_path=tmp_path / "gunicorn.log", workers=2)
    server.start()
    yield server, storage, day, config
    server.stop()
    storage.dispose()


@pytest.fixture
def browser(tmp_path, site):  # type: ignore[no-untyped-def]
    _server, _storage, _day, config = site
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path / "chromium-profile"
    for flag in (
        "--headless",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={spki_hash(config.tls_cert)}",
        "--window-size=1400,1100",
        "--lang=ja",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_login_grid_municipality_revoke_logout(site, browser, tmp_path):  # type: ignore[no-untyped-def]
    server, storage, day, _config = site
    origin = f"https://127.0.0.1:{server.port}"
    wait = WebDriverWait(browser, 20)

    browser.get(f"{origin}/dashboard/")
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "/dashboard/login" in browser.current_url
    browser.find_element(By.ID, "name").send_keys("tanaka")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()

    grid = wait.until(ec.presence_of_element_located((By.ID, "grid")))
    cells = grid.find_elements(By.CSS_SELECTOR, "a.cell")
    states = {c.get_attribute("data-lasdec"): c.get_attribute("class") for c in cells}
    assert states == {
        "131016": "cell s-rejected",
        "131024": "cell s-not_fetched",
        "131032": "cell s-never",
    }
    counts = {
        a.get_attribute("data-state"): a.find_element(By.CLASS_NAME, "number").text
        for a in browser.find_elements(By.CSS_SELECTOR, "#counts a")
    }
    assert counts["rejected"] == counts["not_fetched"] == counts["never"] == "1"
    assert browser.find_element(By.ID, "grid-title").text == "都道府県別"
    fleet_png = tmp_path / "dashboard-fleet.png"
    assert browser.save_screenshot(str(fleet_png))

    browser.find_element(By.CSS_SELECTOR, f'#grid a.cell[data-lasdec="{API_A}"]').click()
    wait.until(ec.presence_of_element_located((By.ID, "terminals")))
    assert "東京都千代田区（131016）" in browser.find_element(By.TAG_NAME, "h1").text
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-terminal="{day.a_terminal}"]')
    row.find_element(By.LINK_TEXT, "失効させる…").click()

    confirm = wait.until(ec.presence_of_element_located((By.ID, "confirm-revoke")))
    assert "端末を失効させますか" in browser.find_element(By.TAG_NAME, "h1").text
    assert find_terminal(storage, day.a_terminal).active, "the question alone changes nothing"
    confirm.click()

    done = wait.until(ec.presence_of_element_located((By.ID, "done")))
    assert "失効させました" in done.text
    assert not find_terminal(storage, day.a_terminal).active
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-terminal="{day.a_terminal}"]')
    assert "失効" in row.text
    municipality_png = tmp_path / "dashboard-municipality.png"
    assert browser.save_screenshot(str(municipality_png))

    browser.find_element(By.ID, "logout").click()
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "ログアウトしました" in browser.page_source
    browser.get(f"{origin}/dashboard/")
    wait.until(ec.presence_of_element_located((By.ID, "password")))
    assert "/dashboard/login" in browser.current_url

    for png in (fleet_png, municipality_png):
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
        print(f"screenshot: {png}")
