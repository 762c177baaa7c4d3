"""``secure-kv audit report --format html``: the auditor's page, checked in a real Chromium.

The page must open with no network (a USB stick), show the same numbers as the JSON report,
never contain a value, show every tenant-chosen name as text, and print. The browser is
Debian's chromium driven by its chromedriver through selenium; its DevTools logs say
whether the page logged an error or asked for anything but itself.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from secure_kv import Category, SecureStore, commands
from secure_kv.keys import StaticMasterKey
from secure_kv.settings import load_settings
from tests.conftest import IN_CI

HOSTILE = "<script>alert(1)</script>"
TOKEN_VALUE = b"sk-live-report-0123456789abcdef"
PREFERENCE_VALUE = b"pref-value-7731"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _fill(url: str, master_key: StaticMasterKey) -> None:
    """Three workspaces (one with a hostile name), every category, expired entries, token reads."""
    with SecureStore.open(url, master_key=master_key, actor="writer@ci") as store:
        for workspace, count in (("tenant-1:search", 5), (HOSTILE, 3), ("tenant-2:crm", 2)):
            ws = store.workspace(workspace)
            for i in range(count):
                ws.set(f"token-{i}", TOKEN_VALUE, category=Category.TOKEN)
                ws.set(f"pref-{i}", PREFERENCE_VALUE)
            ws.set("search:old", b"cached", category=Category.CACHE, ttl=0.000001)
            ws.set("search:new", b"cached", category=Category.CACHE, ttl=3600)
    for actor, reads in (("alice@host-a", 4), ("bob@host-b", 1)):
        with SecureStore.open(url, master_key=master_key, actor=actor) as store:
            for i in range(reads):
                assert store.workspace("tenant-1:search").get(f"token-{i}") == TOKEN_VALUE


def _reports(url: str, master_key: StaticMasterKey, **options: Any) -> tuple[list[dict[str, Any]], str]:
    settings = load_settings(database_url=url, actor="auditor@ci")
    as_json, as_html = io.StringIO(), io.StringIO()
    commands.audit_report(as_json, settings=settings, fmt="json", master_key=master_key, **options)
    commands.audit_report(as_html, settings=settings, fmt="html", master_key=master_key, **options)
    return json.loads(as_json.getvalue()), as_html.getvalue()


class _Metrics(HTMLParser):
    """The numbers the page shows: ``data-metric`` elements and the per-workspace table."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, str] = {}
        self.workspaces: list[list[str]] = []
        self._target: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if "data-metric" in names:
            self._target = ("metric", str(names["data-metric"]))
        elif "data-workspace" in names:
            self.workspaces.append([])
            self._target = ("cell", "")
        elif names.get("data-count") in ("records", "tokens", "expired") and self.workspaces:
            self._target = ("cell", "")

    def handle_data(self, data: str) -> None:
        if self._target is None:
            return
        kind, name = self._target
        if kind == "metric":
            self.metrics[name] = self.metrics.get(name, "") + data
        else:
            self.workspaces[-1].append(data)

    def handle_endtag(self, tag: str) -> None:
        self._target = None


def _expected(rows: list[dict[str, Any]]) -> dict[str, str]:
    categories = Counter(row["category"] for row in rows)
    return {
        "records": f"{len(rows):,}",
        "workspaces": str(len({row["workspace"] for row in rows})),
        "category-token": str(categories["token"]),
        "category-preference": str(categories["preference"]),
        "category-cache": str(categories["cache"]),
        "expired": str(sum(row["expired"] for row in rows)),
        "table-rows": f"{len(rows):,}",
    }


def _per_workspace(rows: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for name in sorted({row["workspace"] for row in rows}):
        mine = [row for row in rows if row["workspace"] == name]
        tokens = sum(row["category"] == "token" for row in mine)
        table.append([name, str(len(mine)), str(tokens), str(sum(row["expired"] for row in mine))])
    return table


def test_the_page_shows_the_json_reports_numbers_on_every_database(
    database_url: str, master_key: StaticMasterKey
) -> None:
    _fill(database_url, master_key)
    rows, html = _reports(database_url, master_key)
    parsed = _Metrics()
    parsed.feed(html)
    assert {name: parsed.metrics[name] for name in _expected(rows)} == _expected(rows)
    assert parsed.workspaces == _per_workspace(rows)
    assert parsed.metrics["verify"] == "intact"
    assert "alice@host-a" in html and "bob@host-b" in html  # token reads per actor


def test_the_page_never_holds_a_value_nor_markup_from_a_name(
    sqlite_url: str, master_key: StaticMasterKey
) -> None:
    _fill(sqlite_url, master_key)
    _, html = _reports(sqlite_url, master_key)
    assert TOKEN_VALUE.decode() not in html and PREFERENCE_VALUE.decode() not in html
    assert HOSTILE not in html  # escaped in the markup, \u003c-escaped in the JSON data
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "default-src 'none'" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_the_page_shows_rotations_and_data_key_versions(sqlite_url: str, master_key: StaticMasterKey) -> None:
    _fill(sqlite_url, master_key)
    settings = load_settings(database_url=sqlite_url, actor="admin@ci")
    commands.rotate_workspaces(settings, master_key, workspaces=["tenant-2:crm"])
    _, html = _reports(sqlite_url, master_key)
    parsed = _Metrics()
    parsed.feed(html)
    assert "admin.rotate_workspace" in html and "admin@ci" in html  # in "Last rotations"
    assert parsed.metrics["old-data-keys"] == "0"  # the rotation re-encrypted every record
    assert html.count("<td>current</td>") == 3  # one live data key per workspace, the old one retired


def test_without_jinja2_the_command_names_the_extra(
    sqlite_url: str, master_key: StaticMasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from secure_kv.cli import main

    _fill(sqlite_url, master_key)
    monkeypatch.setitem(sys.modules, "jinja2", None)  # as if the extra were not installed
    result = CliRunner().invoke(main, ["--database-url", sqlite_url, "audit", "report", "--format", "html"])
    assert result.exit_code == 1
    assert "pip install 'secure-kv[report]'" in result.output
    assert "<html" not in result.output


def test_names_that_would_restyle_themselves_are_shown_escaped(
    sqlite_url: str, master_key: StaticMasterKey
) -> None:
    sneaky = "invoice\u202egpj.exe\nforged-row"  # a right-to-left override and a newline
    with SecureStore.open(sqlite_url, master_key=master_key) as store:
        store.workspace(sneaky).set("key\u200b", b"v")
    _, html = _reports(sqlite_url, master_key)
    assert "\u202e" not in html and "\u200b" not in html and "gpj.exe\nforged" not in html
    assert r"invoice\u202egpj.exe\nforged-row" in html  # as `secure-kv list` shows it
    assert r"key\u200b" in html.replace("\\\\", "\\")  # the record table's JSON doubles backslashes


def test_a_workspace_report_has_only_that_workspace(sqlite_url: str, master_key: StaticMasterKey) -> None:
    _fill(sqlite_url, master_key)
    rows, html = _reports(sqlite_url, master_key, workspace="tenant-2:crm")
    parsed = _Metrics()
    parsed.feed(html)
    assert {row["workspace"] for row in rows} == {"tenant-2:crm"}
    assert parsed.metrics["records"] == str(len(rows))
    assert parsed.workspaces == _per_workspace(rows)


# --- in the browser ---------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver, with DevTools logs on."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if IN_CI:
            raise AssertionError("chromium and chromium-driver are missing: .ci/run installs them")
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1300,2600",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _open(driver: Any, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "true"
    )


def _requests(driver: Any) -> list[str]:
    """Every URL asked for, from the DevTools performance log, but the browser's own start
    page (``chrome://`` resources of the blank tab it opens before ``get``)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(("chrome://", "chrome-untrusted://", "data:")):  # data: is no network
                urls.append(url)
    return urls


def test_the_page_works_in_chromium_offline_and_says_what_the_json_says(
    browser: Any, sqlite_url: str, master_key: StaticMasterKey, tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _fill(sqlite_url, master_key)
    rows, html = _reports(sqlite_url, master_key)
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    _open(browser, page)

    assert [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []
    assert set(_requests(browser)) == {page.as_uri()}  # the page itself, nothing else

    shown = {
        element.get_attribute("data-metric"): element.text
        for element in browser.find_elements(By.CSS_SELECTOR, "[data-metric]")
    }
    assert {name: shown[name] for name in _expected(rows)} == _expected(rows)
    table = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
    assert len(table) == len(rows)
    assert sorted(row.find_elements(By.TAG_NAME, "td")[0].text for row in table) == sorted(
        row["workspace"] for row in rows
    )
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - the hostile name ran no script
    assert HOSTILE in browser.find_element(By.ID, "workspaces").text  # shown as text

    browser.find_element(By.ID, "filter").send_keys("tenant-2")
    wanted = sum(row["workspace"] == "tenant-2:crm" for row in rows)
    WebDriverWait(browser, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#records tbody tr")) == wanted
    )
    browser.find_element(By.CSS_SELECTOR, "#records th[data-column='1']").click()
    keys = [
        row.find_elements(By.TAG_NAME, "td")[1].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
    ]
    assert keys == sorted(keys)

    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    pdf = browser.execute_cdp_cmd("Page.printToPDF", {"printBackground": False, "landscape": True})
    (tmp_path / "report.pdf").write_bytes(base64.b64decode(pdf["data"]))
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
