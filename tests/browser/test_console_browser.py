"""The web console in Debian's Chromium, headless, against the demo federation (`tongban demo
--serve`, its console of 500000): an overseer finds the demo's denied query and verifies its
inclusion proof; a citizen sees their trail. Each page is saved as a screenshot
(TONGBAN_SCREENSHOTS, else the test's tmp_path; TONGBAN_README_SCREENSHOT=1 also writes
docs/img/console-proof.png).

Waiting for the merge of tongban.v1.Tracker and tongban.v1.Consents into the gateway (marked
MERGE below): the citizen's trail shows entries from all three regions, a consent is revoked,
and the next query under it is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import REPO, chromium, screenshot_folder
from selenium.webdriver.common.by import By

from gateway.tokens import issue_agency_token

pytestmark = pytest.mark.integration

START_TIMEOUT = 120.0  # seconds for the demo to play its scenarios and serve


class Demo:
    def __init__(self, process: subprocess.Popen[str], folder: Path, url: str, citizen: str):
        self.process, self.folder, self.url, self.citizen = process, folder, url, citizen

    def token(self, agency: str, operator: str, applicant: str = "") -> str:
        from datetime import UTC, datetime

        return issue_agency_token(
            self.folder / "pki",
            agency,
            operator,
            lifetime_seconds=300,
            now=datetime.now(UTC),
            applicant=applicant,
        )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("console") / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--serve", "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", "TONGBAN_LOG_FORMAT": "console"},
    )
    try:
        transcript, url, citizen = "", "", ""
        deadline = time.monotonic() + START_TIMEOUT
        assert process.stdout is not None
        while not citizen and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            transcript += line
            found = re.search(r"The web console of 500000 \S+: (http://\S+/)", line)
            url = found.group(1) if found else url
            applicant = re.search(
                r"--agency cq.hrss --operator portal --applicant (\d{17}[\dX])", line
            )
            citizen = applicant.group(1) if applicant else citizen
        assert url, f"the demo did not serve its console:\n{transcript[-3000:]}"
        assert citizen, f"the demo printed no citizen log-in:\n{transcript[-3000:]}"
        yield Demo(process, folder, url, citizen)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: object, demo: Demo, token: str, shots: Path, name: str) -> None:
    driver.get(demo.url + "login?lang=zh")  # type: ignore[attr-defined]
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-CN"  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / f"{name}-login.png"))  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys(token)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]


def test_an_overseer_finds_the_denied_query_and_verifies_its_proof(
    demo: Demo, browser: object, tmp_path: Path
) -> None:
    driver: object = browser
    shots = screenshot_folder(tmp_path)
    log_in(driver, demo, demo.token("cq.data", "监督员"), shots, "staff")
    driver.get(demo.url + "staff/records?outcome=denied&lang=en")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "staff-records.png"))  # type: ignore[attr-defined]
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.record")  # type: ignore[attr-defined]
    over_broad = [r for r in rows if "FIELD_NOT_ALLOWED" in r.text]
    assert over_broad, "the demo's over-broad query is not among the denied records"
    over_broad[0].find_element(By.TAG_NAME, "a").click()
    driver.save_screenshot(str(shots / "staff-record.png"))  # type: ignore[attr-defined]
    assert "FIELD_NOT_ALLOWED" in driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    driver.find_element(By.ID, "prove").click()  # type: ignore[attr-defined]
    signs = driver.find_elements(By.ID, "sign")  # type: ignore[attr-defined]
    if signs:  # no checkpoint covers the record yet: ask for one, as staff would
        driver.save_screenshot(str(shots / "staff-proof-wait.png"))  # type: ignore[attr-defined]
        signs[0].click()
    verdict = driver.find_element(By.ID, "verdict")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "staff-proof.png"))  # type: ignore[attr-defined]
    assert "ok" in (verdict.get_attribute("class") or "").split()
    steps = driver.find_elements(By.CSS_SELECTOR, "ol.steps li")  # type: ignore[attr-defined]
    assert len(steps) >= 4
    assert all("failed" not in s.text for s in steps)
    if os.environ.get("TONGBAN_README_SCREENSHOT") == "1":
        shutil.copy(shots / "staff-proof.png", REPO / "docs" / "img" / "console-proof.png")
    driver.get(demo.url + "staff/verify?lang=en")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "staff-verify.png"))  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "intact").text.startswith("The log is intact")  # type: ignore[attr-defined]


def test_a_citizen_sees_their_trail_and_cases(demo: Demo, browser: object, tmp_path: Path) -> None:
    driver: object = browser
    shots = screenshot_folder(tmp_path)
    driver.delete_all_cookies()  # type: ignore[attr-defined]
    token = demo.token("cq.hrss", "portal", applicant=demo.citizen)
    log_in(driver, demo, token, shots, "citizen")
    driver.get(demo.url + "me/cases?lang=en")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "citizen-cases.png"))  # type: ignore[attr-defined]
    main = driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    assert "completed" in main  # the demo's 多地联办 case, completed by 重庆
    driver.get(demo.url + "me/trail?lang=en")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "citizen-trail.png"))  # type: ignore[attr-defined]
    page = driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    answered = driver.find_elements(By.CSS_SELECTOR, "ul.regions li.ok")  # type: ignore[attr-defined]
    assert len(answered) == 3, page
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.entry")  # type: ignore[attr-defined]
    regions = {row.find_elements(By.TAG_NAME, "td")[1].text.split(" ")[0] for row in rows}
    assert regions == {"330000", "510000", "500000"}, page
    # MERGE: consents — open /me/consents, press the revoke button of the demo's consent,
    # check it shows "Revoked", then a query under it is refused (CONSENT_REVOKED).
