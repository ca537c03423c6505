"""The HTML report renders in headless Chromium: its charts decode, its sections and tables are there,
its tables sort and filter.

Real Chromium runs over the report of a real run: ``--dump-dom`` after the page's load event
(the report's own script records how many of its images decoded with a non-zero size, and the
page's height), ``--dump-dom`` with a filter and a sort in the address (the tables' script applies
them as a user's typing and clicking would), and full-page ``--screenshot``s whose pixels must show
the charts' and the example cards' colours. Skipped only when no Chromium binary is installed
(Debian: ``apt-get install -y chromium``). ``REPORT_SCREENSHOT_DIR`` keeps the screenshots for a
person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import inspect as R

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
                 if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")

HEADINGS = ("Row accounting", "Drop reasons", "Sources", "Stages", "Score distributions", "Scores per source",
            "Length distributions", "Clusters and embeddings", "Selected vs not selected", "Examples per drop reason",
            "Rejected rows")


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


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    """Cell texts of the visible body rows of table ``table_id``, in DOM order."""
    m = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', dom, re.S)
    assert m, f"no table {table_id}"
    body = m.group(1).split("<tbody>", 1)[1]
    rows = re.findall(r"<tr([^>]*)>(.*?)</tr>", body, re.S)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)]
            for attrs, cells in rows if "display: none" not in attrs]


def test_report_tables_filter_and_sort(report: Path, full_run: Path, tmp_path: Path) -> None:
    run = R.load_run(full_run)
    pt = R.params_table(run)
    stage = run.stage_names[-1]
    url = report.as_uri() + f"?filter.tbl-stages-1={stage}+budget&sort.tbl-sources-0=-read&sort.tbl-stages-1=parameter"
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", url], tmp_path / "profile").stdout
    assert 'data-tables-ready="1"' in dom
    assert dom.count('class="tbar"') >= 3  # a filter box above every longer table
    # the parameters table, filtered to the rows that show both words (the selector's budget rows)
    text = pl.concat_str([pl.col("step").cast(pl.String), "stage", "parameter", "value"]).str.to_lowercase()
    want = pt.filter(text.str.contains(stage.lower(), literal=True) & text.str.contains("budget", literal=True))
    got = table_rows(dom, "tbl-stages-1")
    assert len(got) == want.height > 0
    assert all(r[1] == stage and "budget" in r[2] + r[3] for r in got)
    assert [r[2] for r in got] == sorted((r[2] for r in got), key=str.lower)
    assert re.search(r'<table[^>]*id="tbl-stages-1"[^>]*>', dom).group(0).count(f'data-shown="{want.height}"') == 1
    # the sources table, sorted by rows read, largest first
    src = table_rows(dom, "tbl-sources-0")
    reads = [int(r[2].replace(",", "")) for r in src]
    assert reads == sorted(reads, reverse=True) and len(src) == R.sources_table(run).height
    assert 'aria-sort="descending"' in dom


def test_report_screenshot_shows_the_new_sections(report: Path, tmp_path: Path) -> None:
    """The whole page (its height measured by the page itself): selection cards, per-source boxes and
    rejected-row cards are drawn below the first screens."""
    from PIL import Image

    dom = chromium(["--window-size=1280,1000", "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
                   tmp_path / "profile").stdout
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    assert height > 7000
    shot = tmp_path / "report-full.png"
    chromium([f"--window-size=1280,{height}", f"--screenshot={shot}", report.as_uri()], tmp_path / "profile")
    keep = os.environ.get("REPORT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= height - 10
    lower = img[3000:]

    def pixels(rgb: tuple[int, int, int], part: np.ndarray) -> int:
        return int((np.abs(part - np.array(rgb)).sum(axis=2) < 12).sum())

    # rejected-row cards: a 4 px purple left border per card, only in the lower part of the page
    assert pixels((0x81, 0x72, 0xB3), lower) > 4 * 40 * 3
    # selection cards (green border: selected, blue border: left out) and the green selected boxes
    assert pixels((0x55, 0xA8, 0x68), lower) > 2000
    assert pixels((0x4C, 0x72, 0xB0), lower) > 2000
    # not blank anywhere: text, tables or figures all the way down
    for band in np.array_split(img, max(2, height // 1500)):
        assert band.std() > 5
