"""Is the HTML audit report usable at 100,000 records? Its size, how long it takes to make,
and how long Debian's headless Chromium takes to load it and to filter and sort its table.

A SQLite store of N records (default 100,000: 200 workspaces; 10 % tokens, 80 % preferences,
10 % cache entries, a tenth of them expired) is filled with ``set_many``; then
``audit report --format html`` is written to a file and opened in Chromium through
selenium (as tests/audit/test_report_html.py does). Load time is from navigation start to the
page's script having parsed the records and drawn the first page of the table.

Usage (from the repo root)::

    python bench/bench_report_html.py                 # 100,000 records
    python bench/bench_report_html.py --records 5000  # quicker
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from secure_kv import Category, SecureStore, commands
from secure_kv.keys import StaticMasterKey
from secure_kv.settings import load_settings

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1300,2000",
)


def fill(url: str, master_key: StaticMasterKey, records: int, workspaces: int = 200) -> None:
    per_workspace = records // workspaces
    with SecureStore.open(url, master_key=master_key, actor="bench@host") as store:
        for w in range(workspaces):
            ws = store.workspace(f"tenant-{w:04d}:plugin")
            tokens = per_workspace // 10
            caches = per_workspace // 10
            prefs = per_workspace - tokens - caches
            ws.set_many(
                ((f"token-{i}", b"sk-" + os.urandom(16).hex().encode()) for i in range(tokens)),
                category=Category.TOKEN,
            )
            ws.set_many((f"pref-{i}", b"value") for i in range(prefs))
            ws.set_many(
                ((f"cache-old-{i}", b"c") for i in range(caches // 10)), category=Category.CACHE, ttl=1e-6
            )
            ws.set_many(
                ((f"cache-{i}", b"c") for i in range(caches - caches // 10)),
                category=Category.CACHE,
                ttl=3600,
            )
            if w % 20 == 0:
                ws.get_many([f"token-{i}" for i in range(min(tokens, 20))])


def browse(page: Path, profile: Path) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        driver.set_page_load_timeout(300)
        start = time.perf_counter()
        driver.get(page.as_uri())
        WebDriverWait(driver, 300).until(
            lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "true"
        )
        wall = time.perf_counter() - start
        ready = driver.execute_script(
            "return performance.now() - 0"
        )  # ms since navigation start, read once the table is drawn
        heap = driver.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : 0")
        search = driver.find_element(By.ID, "filter")
        start = time.perf_counter()
        search.send_keys("tenant-0150")
        WebDriverWait(driver, 60).until(lambda d: "filtered" in d.find_element(By.ID, "position").text)
        filtered = time.perf_counter() - start
        search.clear()
        driver.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
        WebDriverWait(driver, 60).until(lambda d: "filtered" not in d.find_element(By.ID, "position").text)
        start = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, "#records th[data-column='3']").click()
        sorted_s = time.perf_counter() - start
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return {
            "load_wall_s": wall,
            "ready_ms_after_navigation": float(ready),
            "js_heap_mb": heap / 1e6,
            "filter_s": filtered,
            "sort_s": sorted_s,
            "console_errors": float(len(errors)),
        }
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'store.db'}"
        key = StaticMasterKey(os.urandom(32))
        start = time.perf_counter()
        fill(url, key, args.records)
        print(f"filled {args.records:,} records in {time.perf_counter() - start:.1f} s")
        out = io.StringIO()
        start = time.perf_counter()
        summary = commands.audit_report(
            out, settings=load_settings(database_url=url), fmt="html", master_key=key
        )
        made = time.perf_counter() - start
        page = root / "report.html"
        page.write_text(out.getvalue(), encoding="utf-8")
        size = page.stat().st_size
        print(f"report: {summary.records:,} records, {size / 1e6:.1f} MB, made in {made:.1f} s")
        for name, value in browse(page, root / "profile").items():
            print(f"chromium {name}: {value:.2f}")


if __name__ == "__main__":
    main()
