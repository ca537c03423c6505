"""The report's evaluation section: a table and a plot from ``<run>/evaluation.json``.

:func:`evaluation_section_html` returns a self-contained HTML fragment (the plot inlined as a base64
PNG, also written to ``<run>/figures/evaluation.png``), or None when the run was never evaluated. The
report module places it; this module does not import the report.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from pipeline.evaluate.core import load_evaluation, vs_random_rows


def _fmt(c: dict[str, Any], acc: bool) -> str:
    if c["mean"] is None:
        return "-"
    f = "{:.1%}" if acc else "{:.4f}"
    s = f.format(c["mean"])
    if c["lo"] is not None:
        s += f" [{f.format(c['lo'])}, {f.format(c['hi'])}]"
    return s


def evaluation_plot_png(doc: dict[str, Any]) -> bytes | None:
    """Per target: each arm's mean minus random's, with the paired-bootstrap 95% interval."""
    s = doc["summary"]
    if not s["vs_random"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = s["targets"]
    fig, axes = plt.subplots(1, len(ts), figsize=(3.4 * len(ts) + 1, 0.45 * len(s["arms"]) + 1.6), squeeze=False)
    for ax, t in zip(axes[0], ts, strict=True):
        rows = [(a, b) for a, b in s["vs_random"].get(t, {}).items()]
        y = list(range(len(rows)))
        ax.errorbar([b["diff"] for _, b in rows], y,
                    xerr=[[b["diff"] - b["lo"] for _, b in rows], [b["hi"] - b["diff"] for _, b in rows]],
                    fmt="o", color="#1f77b4", capsize=3)
        ax.axvline(0, color="#888", lw=1, ls="--")
        ax.set_yticks(y, [a for a, _ in rows])
        ax.invert_yaxis()
        better = "lower is better" if s["lower_is_better"][t] else "higher is better"
        ax.set_title(f"{t}\narm − random ({better})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def evaluation_section_html(run_dir: str | Path) -> str | None:
    """The HTML section of an evaluated run (None when ``evaluation.json`` is absent)."""
    run_dir = Path(run_dir)
    doc = load_evaluation(run_dir)
    if doc is None:
        return None
    s = doc["summary"]
    acc = {t: not s["lower_is_better"][t] for t in s["targets"]}
    head = "".join(f"<th>{html.escape(t)} ({'accuracy' if acc[t] else 'NLL/token'})</th>" for t in s["targets"])
    body = []
    for a in s["arms"]:
        cells = "".join(f'<td class="num">{html.escape(_fmt(s["table"][a][t], acc[t]))}</td>' for t in s["targets"])
        body.append(f"<tr><td>{html.escape(a)}</td>{cells}</tr>")
    vs = []
    if s["vs_random"]:
        for a, diffs in vs_random_rows(s):
            cells = [f'<td class="num">{b["diff"]:+.4f} [{b["lo"]:+.4f}, {b["hi"]:+.4f}]</td>' if b else "<td>-</td>"
                     for b in diffs]
            vs.append(f"<tr><td>{html.escape(a)}</td>{''.join(cells)}</tr>")
    png = evaluation_plot_png(doc)
    fig = ""
    if png:
        (run_dir / "figures").mkdir(exist_ok=True)
        (run_dir / "figures" / "evaluation.png").write_bytes(png)
        fig = (f'<figure><img alt="arm minus random per target" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode()}"><figcaption>Each arm minus random, per target, with the '
               "paired-bootstrap 95% interval over target items.</figcaption></figure>")
    m = doc["model"]
    st = doc["settings"]
    intro = (f"<p>{html.escape(m['ref'])} fine-tuned with TRL SFTTrainer{' (LoRA)' if st['lora'] else ''} on "
             f"{doc['budget']} rows per arm for {doc['steps']} steps (batch {st['batch_size']}×{st['grad_accum']}, "
             f"lr {st['learning_rate']:g}, max length {st['max_length']}), seeds {html.escape(str(st['seeds']))}, "
             f"on {html.escape(m['device'])} ({html.escape(m['dtype'])}); wall time {doc['wall_s']:.0f} s. Cells: "
             "mean over seeds [95% t-interval].</p>")
    vs_html = (f"<h3>Arm minus random (paired bootstrap over items)</h3><table><tr><th>arm</th>{head}</tr>"
               f"{''.join(vs)}</table>") if vs else "<p>No random arm, so no comparison with random.</p>"
    return (f'<section id="evaluation"><h2>Proof by training</h2>{intro}'
            f"<table><tr><th>arm</th>{head}</tr>{''.join(body)}</table>{vs_html}{fig}</section>")
