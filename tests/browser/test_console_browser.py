"""The web console in Debian's Chromium, headless, against the demo federation (`tongban demo
--serve`, its console of 500000): an overseer finds the demo's denied query and verifies its
inclusion proof; a citizen sees their trail (entries from all three regions) and cases, then
revokes the consent the demo registered for them, after which the query under it that was
answered before (the command the demo prints, examples/client.py --consent) is refused
CONSENT_REVOKED and the trail shows the refusal; every page of both audiences, in both
languages, at a desk's width and a phone's, passes axe-core's WCAG 2.1 A/AA rules and fits the
phone's screen. Each page is saved as a screenshot
(TONGBAN_SCREENSHOTS, else the test's tmp_path; TONGBAN_README_SCREENSHOT=1 also writes
docs/img/console-proof.png).
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
from typing import Any

import pytest
from browser_support import REPO, chromium, screenshot_folder
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from gateway.tokens import issue_agency_token

pytestmark = pytest.mark.integration

START_TIMEOUT = 120.0  # seconds for the demo to play its scenarios and serve
CLIENT_TIMEOUT = 60.0  # seconds for examples/client.py (and its `tongban token issue`)
PAGE_TIMEOUT = 10.0  # seconds for a page to follow a form's post
# An examples/client.py command the demo prints (the first after the text it is searched in).
CLIENT_COMMAND = re.compile(
    r"^\S*python\S* \S*examples/client\.py.*?--token \"[^\n]*\"$", re.S | re.M
)


class Demo:
    def __init__(
        self, process: subprocess.Popen[str], folder: Path, url: str, citizen: str, transcript: str
    ):
        self.process, self.folder, self.url, self.citizen = process, folder, url, citizen
        consent = re.search(r"The citizen's consent ([\w-]+): ", transcript)
        query = CLIENT_COMMAND.search(transcript, consent.end()) if consent else None
        assert consent, f"the demo left no consent for its citizen:\n{transcript[-3000:]}"
        assert query, f"the demo printed no query under the consent:\n{transcript[-3000:]}"
        self.consent_id, self.consent_query = consent.group(1), query.group(0)

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
        while "Ctrl-C stops them." not in transcript and time.monotonic() < deadline:
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
        yield Demo(process, folder, url, citizen, transcript)
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
    # Logged in once the log-in page has gone: a page asked for sooner may be replaced by it.
    WebDriverWait(driver, PAGE_TIMEOUT).until(lambda d: "/login" not in d.current_url)


def shown(driver: object, by: str, what: str) -> Any:
    """The element once the page that has it is shown (a click's navigation may still be on
    its way when the click returns)."""
    wait = WebDriverWait(driver, PAGE_TIMEOUT)  # type: ignore[arg-type]
    return wait.until(expected_conditions.presence_of_element_located((by, what)))


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
    shown(driver, By.ID, "prove")
    driver.save_screenshot(str(shots / "staff-record.png"))  # type: ignore[attr-defined]
    assert "FIELD_NOT_ALLOWED" in driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    driver.find_element(By.ID, "prove").click()  # type: ignore[attr-defined]
    shown(driver, By.CSS_SELECTOR, "#sign, #verdict")
    signs = driver.find_elements(By.ID, "sign")  # type: ignore[attr-defined]
    if signs:  # no checkpoint covers the record yet: ask for one, as staff would
        driver.save_screenshot(str(shots / "staff-proof-wait.png"))  # type: ignore[attr-defined]
        signs[0].click()
    verdict = shown(driver, By.ID, "verdict")
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


def ask_under_consent(demo: Demo) -> subprocess.CompletedProcess[str]:
    """The query the demo printed: 重庆医保 asks 四川 for the citizen's medical insurance, with
    its agency's TLS key, a token from `tongban token issue` and the consent's file."""
    return subprocess.run(
        ["bash", "-c", demo.consent_query],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )


def test_a_citizen_revokes_a_consent_and_the_query_under_it_is_refused(
    demo: Demo, browser: object, tmp_path: Path
) -> None:
    driver: object = browser
    shots = screenshot_folder(tmp_path)
    answered = ask_under_consent(demo)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "answer from 510000 (fresh)" in answered.stdout
    driver.delete_all_cookies()  # type: ignore[attr-defined]
    token = demo.token("cq.hrss", "portal", applicant=demo.citizen)
    log_in(driver, demo, token, shots, "consent")
    driver.get(demo.url + "me/consents?lang=zh")  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "citizen-consents.png"))  # type: ignore[attr-defined]
    cards = driver.find_elements(By.CSS_SELECTOR, "li.consent")  # type: ignore[attr-defined]
    (card,) = [c for c in cards if demo.consent_id in c.text]
    assert "有效" in card.find_element(By.TAG_NAME, "h2").text
    revoke = card.find_element(By.CSS_SELECTOR, "button[type=submit]")
    revoke.send_keys(Keys.ENTER)  # the keyboard, as someone without a mouse presses it
    # The post is answered by a redirect to the list (a refusal would be a page of its own).
    WebDriverWait(driver, PAGE_TIMEOUT).until(lambda d: d.current_url == demo.url + "me/consents")
    driver.save_screenshot(str(shots / "citizen-consent-revoked.png"))  # type: ignore[attr-defined]
    for lang, revoked in (("zh", "已撤回"), ("en", "Revoked")):
        driver.get(demo.url + f"me/consents?lang={lang}")  # type: ignore[attr-defined]
        cards = driver.find_elements(By.CSS_SELECTOR, "li.consent")  # type: ignore[attr-defined]
        (card,) = [c for c in cards if demo.consent_id in c.text]
        assert revoked in card.find_element(By.TAG_NAME, "h2").text
        assert not card.find_elements(By.TAG_NAME, "button")  # nothing left to revoke
    refused = ask_under_consent(demo)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    # The client prints the ErrorInfo reason it unpacked from the status details.
    assert re.search(r"^refused: PERMISSION_DENIED CONSENT_REVOKED: ", refused.stderr, re.M)
    # The home gateway audited the refusal before it answered: the trail shows it at once.
    driver.get(demo.url + "me/trail?lang=en")  # type: ignore[attr-defined]
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.entry")  # type: ignore[attr-defined]
    refusals = [r for r in rows if "CONSENT_REVOKED" in r.text]
    assert refusals, driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    driver.execute_script("arguments[0].scrollIntoView()", refusals[-1])  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "citizen-trail-revoked.png"))  # type: ignore[attr-defined]
    cells = [td.text for td in refusals[-1].find_elements(By.TAG_NAME, "td")]
    assert cells[1].startswith("500000"), cells  # refused by the home gateway, before 四川
    assert cells[3] == "medical.insurance", cells
    assert cells[7].startswith("denied"), cells


# accessibility -------------------------------------------------------------------------------
AXE = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]  # WCAG 2.1 levels A and AA
WIDTHS = {"desk": (1100, 900), "phone": (375, 812)}  # CSS pixels; the phone's is an iPhone's


def axe_violations(driver: Any) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page shown, one line each: the rule, its
    impact and the elements it found."""
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(AXE.read_text(encoding="utf-8"))
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}})"
        ".then(r => done(r.violations.map(v => [v.id, v.impact,"
        " v.nodes.slice(0, 3).map(n => n.target.join(' '))])))"
        ".catch(e => done([['axe failed', String(e), []]]));",
        WCAG,
    )
    return [f"{rule} ({impact}): {', '.join(targets)}" for rule, impact, targets in found]


def overflows(driver: Any) -> bool:
    """Does the page scroll sideways (wider than the window)?"""
    return bool(
        driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1")
    )


def test_every_page_passes_axe_and_fits_a_phone(
    demo: Demo, browser: object, tmp_path: Path
) -> None:
    """Every page of both audiences, in Chinese and English, at a desk's width and a phone's:
    axe-core (the field's accessibility engine, tests/browser/package-lock.json) finds no
    WCAG 2.1 A or AA violation (labels, names, contrast, language, structure), and nothing is
    wider than the phone's screen."""
    driver: Any = browser
    shots = screenshot_folder(tmp_path)
    problems: dict[str, list[str]] = {}
    record = ""

    def check(path: str) -> None:
        for width, size in WIDTHS.items():
            driver.set_window_size(*size)
            for lang in ("zh", "en"):
                joiner = "&" if "?" in path else "?"
                driver.get(f"{demo.url}{path}{joiner}lang={lang}")
                found = axe_violations(driver)
                if width == "phone" and overflows(driver):
                    found.append("wider than a phone's screen")
                if found:
                    problems[f"{path} {lang} {width}"] = found
            name = re.sub(r"\W+", "-", path).strip("-") or "home"
            driver.save_screenshot(str(shots / f"a11y-{name}-phone.png"))
        driver.set_window_size(*WIDTHS["desk"])

    driver.delete_all_cookies()
    check("login")
    log_in(driver, demo, demo.token("cq.data", "监督员"), shots, "a11y-staff")
    driver.get(demo.url + "staff/records")
    links = driver.find_elements(By.CSS_SELECTOR, "tr.record a")
    assert links, "no audit records to show"
    record = (links[0].get_attribute("href") or "").removeprefix(demo.url)
    pages = ("staff/records", record, f"{record}/proof", "staff/verify", "staff/alerts")
    for path in (*pages, "staff/records/99999999"):  # the last: the page of a refusal (404)
        check(path)
    check("staff/trail")
    for lang in ("zh", "en"):  # the trail found (a form's answer: not a page to get)
        driver.get(f"{demo.url}staff/trail?lang={lang}")
        driver.find_element(By.ID, "subject").send_keys(demo.citizen, Keys.ENTER)
        shown(driver, By.CSS_SELECTOR, "ul.regions")
        if found := axe_violations(driver):
            problems[f"staff/trail (found) {lang}"] = found
    driver.delete_all_cookies()
    log_in(driver, demo, demo.token("cq.hrss", "portal", applicant=demo.citizen), shots, "a11y")
    for path in ("me/trail", "me/consents", "me/cases"):
        check(path)
    assert not problems, "\n".join(
        f"{page}: {'; '.join(found)}" for page, found in problems.items()
    )
