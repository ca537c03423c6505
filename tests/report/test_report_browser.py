"""The HTML report renders in headless Chromium: its charts decode, its sections and tables are there.

Two real Chromium runs over the report of a real run: ``--dump-dom`` after the page's load event
(the report's own script records how many of its images decoded with a non-zero size), and a
full-page ``--screenshot`` whose pixels must show the charts' colours. Skipped only when no
Chromium binary is installed (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline import inspect as R

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
                 if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")

HEADINGS = ("Row accounting", "Drop reasons", "Sources", "Stages", "Score distributions", "Length distributions",
            "Clusters and embeddings", "Examples per drop reason")


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(full_run: Path) -> Path:
    return R.write_report(full_run)


def test_report_dom_has_decoded_charts_and_tables(report: Path, tmp_path: Path) -> None:
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", report.as_uri()], tmp_path / "profile").stdout
    n_img = len(re.findall(r"<img\b", dom))
    assert n_img >= 4
    m = re.search(r'data-images-loaded="(\d+)"', dom)
    assert m, "the load event did not fire (no data-images-loaded on <body>)"
    assert int(m.group(1)) == n_img == int(re.search(r'data-images="(\d+)"', dom).group(1)), "an image failed to decode"
    h2 = re.findall(r"<h2>([^<]+)</h2>", dom)
    for h in HEADINGS:
        assert h in h2, h
    assert dom.count("<table") >= 6
    assert "balanced" in dom


def test_report_screenshot_shows_the_charts(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    chromium(["--window-size=1280,7000", f"--screenshot={shot}", report.as_uri()], tmp_path / "profile")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[1] == 1280 and img.shape[0] >= 3000
    # not blank: the page has text and figures all the way down its first screens
    for band in np.array_split(img[:3000], 6):
        assert band.std() > 10
    # the charts' colours are on the page (funnel bars, selected group, dropped group)
    for rgb in ((0x4C, 0x72, 0xB0), (0x55, 0xA8, 0x68), (0x64, 0x65, 0x6B)):
        close = (np.abs(img - np.array(rgb)).sum(axis=2) < 12).sum()
        assert close > 2000, f"too few pixels of chart colour #{''.join(f'{c:02x}' for c in rgb)}: {close}"
