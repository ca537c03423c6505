"""Both notebooks run top to bottom (nbclient, a real kernel) against real runs made in this session.

Parameters are injected papermill-style: a cell with the values is inserted after the cell tagged
``parameters``. The kernel is this interpreter, through a kernel spec written to a temporary
``JUPYTER_PATH`` (a user-level ``python3`` spec pointing elsewhere cannot hijack it), started in
the repository root so ``import pipeline`` is this checkout.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "sft-curate-test"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sft-curate (tests)", "language": "python",
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(d))
        mp.setenv("MPLBACKEND", "Agg")
        yield KERNEL


def execute(name: str, params: dict[str, Any], kernel: str, out_dir: Path) -> Any:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=180, allow_errors=False,
                                     resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, out_dir / name)  # the executed copy, for a look when a cell fails
    return nb


def outputs_of(nb: Any, startswith: str) -> list[dict[str, Any]]:
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(startswith)]
    assert cells, f"no cell starting with {startswith!r}"
    return [o for c in cells for o in c.get("outputs", [])]


def html_of(nb: Any, startswith: str) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs_of(nb, startswith))


def table_row(html: str, label: str) -> list[int]:
    """The numbers of the row labelled ``label`` in an HTML table of :func:`pipeline.inspect.table_html`."""
    m = re.search(rf"<tr><td[^>]*>(?:&quot;)?{re.escape(label)}(?:&quot;)?</td>((?:<td[^>]*>[^<]*</td>)+)</tr>", html)
    assert m, f"no row {label!r}"
    return [int(v.replace(",", "")) for v in re.findall(r"<td[^>]*>([-\d,]+)</td>", m.group(1))]


def test_notebooks_are_stored_without_outputs() -> None:
    for p in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), p.name


def test_inspect_run_notebook(full_run: Path, rerun: Path, what_if_case: tuple[str, dict], kernel: str,
                              tmp_path: Path) -> None:
    stage, params = what_if_case
    nb = execute("inspect_run.ipynb", {"run_dir": str(full_run), "what_if_target": stage, "what_if_kwargs": params,
                                       "examples_per_reason": 2}, kernel, tmp_path)
    # charts came out as images
    for call in ("R.plot_funnel", "R.plot_score_distributions", "R.plot_lengths"):
        assert "data:image/png;base64," in html_of(nb, call), call
    assert "<table" in html_of(nb, "R.accounting") or "<table" in html_of(nb, "R.accounting(run)")
    assert 'class="pair"' in html_of(nb, "examples = ")
    # the what-if cell shows the numbers a real rerun with the changed threshold produced
    wi_html = html_of(nb, "wi = R.what_if")
    real = json.loads((rerun / "manifest.json").read_text())["counts"]
    now = json.loads((full_run / "manifest.json").read_text())["counts"]
    assert "exact replay" in wi_html
    for metric in ("kept", "dropped", "selected"):
        n, w, change = table_row(wi_html, metric)
        assert (n, w, change) == (now[metric], real[metric], real[metric] - now[metric]), metric


def test_compare_runs_notebook(full_run: Path, rerun: Path, kernel: str, tmp_path: Path) -> None:
    nb = execute("compare_runs.ipynb", {"run_a": str(full_run), "run_b": str(rerun)}, kernel, tmp_path)
    from pipeline import inspect as R

    cmp = R.compare_runs(full_run, rerun)
    counts = html_of(nb, "cmp.counts")
    a, b, change = table_row(counts, "kept")
    assert (a, b) == (cmp.a.manifest["counts"]["kept"], cmp.b.manifest["counts"]["kept"]) and change == b - a
    assert "data:image/png;base64," in html_of(nb, "R.plot_selection_overlap")
    assert "data:image/png;base64," in html_of(nb, "R.plot_score_shifts")
    assert "<table" in html_of(nb, "cmp.transitions")


def _default_run_cells(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c.source for c in nb.cells if {"parameters", "default-run"} & set(c.metadata.get("tags", []))]
    assert len(tagged) == 2, name
    return "\n".join(tagged)


def test_notebooks_default_to_the_newest_runs(real_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As shipped (no parameters injected) the notebooks open the newest complete runs under runs/."""
    import os

    from pipeline.config import load_config
    from pipeline.engine import run

    runs = tmp_path / "runs"
    cfg = load_config({"run": {"name": "nb", "shard_rows": 500, "device": "cpu"},
                       "sources": [{"path": str(real_dir / "gsm8k_test.jsonl.gz")}],
                       "stages": [{"stage": "length"}]})
    older = run(cfg, out=runs, run_id="night-1").run_dir
    newer = run(cfg, out=runs / "nested", run_id="night-2").run_dir
    unfinished = run(cfg, out=runs, run_id="night-3").run_dir  # newest, but not complete: skipped
    os.utime(older / "manifest.json", (1_000_000_000, 1_000_000_000))
    m = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**m, "status": "running"}))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # Jupyter opened in notebooks/ finds ../runs
    ns: dict[str, Any] = {}
    exec(_default_run_cells("inspect_run.ipynb"), ns)
    assert Path(ns["run_dir"]) == newer.resolve()
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(_default_run_cells("compare_runs.ipynb"), ns)
    assert (Path(ns["run_a"]), Path(ns["run_b"])) == (older.resolve(), newer.resolve())
    monkeypatch.chdir(newer)  # no runs/ here or one level up
    with pytest.raises(FileNotFoundError, match="curate run"):
        exec(_default_run_cells("inspect_run.ipynb"), {})
