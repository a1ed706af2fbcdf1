"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver (the path is
given: Selenium downloads nothing). Importable as `browser_support` (tests/browser is on the
path of its tests)."""

from __future__ import annotations

import os
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[1]


def chromium(width: int = 1100, height: int = 900) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--lang=zh-CN",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def screenshot_folder(default: Path) -> Path:
    folder = Path(os.environ.get("TONGBAN_SCREENSHOTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
