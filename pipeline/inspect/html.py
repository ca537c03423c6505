"""The HTML report of a run: one self-contained file (charts inlined as base64 PNG, CSS and a small
script inline, no external asset), and the tables it is made of.

Every table in the report can be sorted (click a column header) and filtered (a search box above
tables of more than a few rows; all words must appear in a row). Filters and sorts can be set from
the page's address, so a filtered view can be shared: ``report.html?filter.tbl-stages-1=kmq`` or
``?sort.tbl-sources-0=-read`` (``-`` for descending); tables are named ``tbl-<section>-<n>``.

:func:`write_report` writes ``<run>/figures/*.png`` and ``<run>/report.html`` and links the report
from the manifest (``"report": "report.html"``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from pipeline.inspect.charts import (
    Chart,
    plot_cluster_sizes,
    plot_embedding_map,
    plot_flags,
    plot_funnel,
    plot_lengths,
    plot_score_distributions,
    plot_scores_by_source,
)
from pipeline.inspect.examples import (
    drop_examples,
    esc,
    examples_html,
    reject_examples,
    reject_examples_html,
    selection_examples,
    selection_html,
)
from pipeline.inspect.run import Run, _run, load_run
from pipeline.inspect.tables import (
    accounting,
    cluster_table,
    drop_reasons,
    params_table,
    reject_reasons,
    score_by_source,
    score_summary,
    settings_table,
    sources_table,
    stages_table,
)
from pipeline.io.atomic import atomic_path, write_json_atomic


def table_html(df: pl.DataFrame, max_rows: int = 200, classes: str = "") -> str:
    """A plain, escaped HTML table of a frame (numbers right-aligned and thousands-separated)."""
    if df.is_empty():
        return '<p class="missing">(empty)</p>'
    numeric = {c for c, t in df.schema.items() if t.is_numeric()}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{html.escape(c)}</th>' for c in df.columns)
    body = []
    for row in df.head(max_rows).iter_rows():
        cells = []
        for c, v in zip(df.columns, row, strict=True):
            if v is None:
                s, cls = "–", "null"
            elif isinstance(v, bool):
                s, cls = ("yes" if v else "no"), ""
            elif isinstance(v, int):
                s, cls = f"{v:,}", "num"
            elif isinstance(v, float):
                s, cls = (f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"), "num"
            else:
                s, cls = str(v), ""
            cells.append(f'<td class="{cls if c in numeric or cls == "null" else cls}">{esc(s)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{df.height - max_rows:,} more rows not shown</p>' if df.height > max_rows else ""
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{more}'


_CSS = """
body{font:14px/1.5 -apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff;box-shadow:0 0 0 1px #e5e7eb}
h1{font-size:24px;margin:8px 0 4px} h2{font-size:19px;margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid #e5e7eb}
h3{font-size:15px;margin:20px 0 8px;color:#333}
.meta{color:#555;font-size:13px} .meta code{background:#f1f3f5;padding:1px 5px;border-radius:3px}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:18px 0}
.kpi{flex:1 1 120px;border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px}
.kpi .v{font-size:22px;font-weight:600} .kpi .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}
.kpi.ok{border-left:4px solid #55a868} .kpi.bad{border-left:4px solid #c44e52}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px;width:auto;max-width:100%}
th,td{padding:4px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f8f9fb;font-weight:600} th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
td.null{color:#aaa} tbody tr:hover{background:#fafbfc}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #eceef1;border-radius:6px}
figcaption{font-size:12px;color:#666;margin-top:4px}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;border-radius:6px;padding:8px 12px}
.note{color:#666;font-size:12px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:8px 0 14px}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;min-width:0}
.card.drop{border-left:4px solid #c44e52} .card.match{border-left:4px solid #4c72b0}
.card pre{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:2px 0 6px;background:#fafbfc;padding:6px;border-radius:4px;max-height:220px;overflow:auto}
.tag{font-size:12px;font-weight:600;color:#444;margin-bottom:4px} .lbl{font-size:11px;color:#888;text-transform:uppercase}
nav{font-size:13px;margin:10px 0 0} nav a{margin-right:12px;color:#4c72b0;text-decoration:none}
.params td:last-child{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
th{cursor:pointer;user-select:none;white-space:nowrap} th[aria-sort=ascending]::after{content:" \\25B2";font-size:9px;color:#888}
th[aria-sort=descending]::after{content:" \\25BC";font-size:9px;color:#888}
.tbar{display:flex;gap:10px;align-items:center;margin:6px 0 0}
.tbar input{font:13px inherit;padding:3px 8px;border:1px solid #d0d4da;border-radius:4px;width:260px}
.tbar .count{font-size:12px;color:#666}
.card.sel{border-left:4px solid #55a868} .card.notsel{border-left:4px solid #4c72b0} .card.rej{border-left:4px solid #8172b3}
.why{font-size:12px;color:#555;margin:0 0 6px} .cards{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin:8px 0 14px}
"""

_SCRIPT = r"""
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute('data-images-loaded', imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-height', document.documentElement.scrollHeight);
});
(function () {
  var FILTER_MIN_ROWS = 6;
  function value(td) {
    var t = (td ? td.textContent : '').trim();
    if (t === '' || t === '\u2013') return null;
    var n = t.replace(/,/g, '');
    if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(n)) return parseFloat(n);
    return t.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === 'number' ? -1 : 1;
  }
  function sortBy(table, col, desc) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (r, i) { return {r: r, i: i, v: value(r.cells[col])}; });
    keyed.sort(function (x, y) {
      if (x.v === null || y.v === null) return x.v === y.v ? x.i - y.i : (x.v === null ? 1 : -1);
      var c = compare(x.v, y.v);
      return (desc ? -c : c) || x.i - y.i;
    });
    keyed.forEach(function (k) { body.appendChild(k.r); });
    var ths = table.tHead.rows[0].cells;
    for (var j = 0; j < ths.length; j++) ths[j].removeAttribute('aria-sort');
    ths[col].setAttribute('aria-sort', desc ? 'descending' : 'ascending');
    table.setAttribute('data-sort', (desc ? '-' : '') + ths[col].textContent);
  }
  function filter(table, text, count) {
    var words = text.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var t = rows[i].textContent.toLowerCase();
      var ok = words.every(function (w) { return t.indexOf(w) >= 0; });
      rows[i].style.display = ok ? '' : 'none';
      if (ok) shown++;
    }
    table.setAttribute('data-shown', shown);
    if (count) count.textContent = words.length ? shown + ' of ' + rows.length + ' rows' : rows.length + ' rows';
  }
  function remember(key, val) {
    try {
      var u = new URL(window.location.href);
      if (val) u.searchParams.set(key, val); else u.searchParams.delete(key);
      window.history.replaceState(null, '', u.toString());
    } catch (e) { /* file: URLs in some browsers refuse replaceState: the view just is not remembered */ }
  }
  function enhance(table, id, params) {
    table.id = id;
    table.classList.add('interactive');
    var ths = Array.prototype.slice.call(table.tHead.rows[0].cells);
    ths.forEach(function (th, col) {
      th.title = 'sort by ' + th.textContent;
      th.addEventListener('click', function () {
        var desc = th.getAttribute('aria-sort') === 'ascending';
        sortBy(table, col, desc);
        remember('sort.' + id, (desc ? '-' : '') + th.textContent);
      });
    });
    var count = null, input = null;
    if (table.tBodies[0].rows.length > FILTER_MIN_ROWS) {
      var bar = document.createElement('div');
      bar.className = 'tbar';
      input = document.createElement('input');
      input.type = 'search';
      input.placeholder = 'filter rows (every word must appear)';
      input.setAttribute('aria-label', 'filter the rows of this table');
      count = document.createElement('span');
      count.className = 'count';
      bar.appendChild(input);
      bar.appendChild(count);
      table.parentNode.insertBefore(bar, table);
      input.addEventListener('input', function () { filter(table, input.value, count); remember('filter.' + id, input.value); });
    }
    var f = params.get('filter.' + id);
    if (input && f) input.value = f;
    filter(table, input ? input.value : '', count);
    var s = params.get('sort.' + id);
    if (s) {
      var desc = s.charAt(0) === '-', name = desc ? s.slice(1) : s;
      ths.forEach(function (th, col) { if (th.textContent === name) sortBy(table, col, desc); });
    }
  }
  document.addEventListener('DOMContentLoaded', function () {
    var params = new URLSearchParams(window.location.search);
    Array.prototype.forEach.call(document.querySelectorAll('section'), function (sec) {
      Array.prototype.forEach.call(sec.querySelectorAll('table'), function (t, k) {
        if (t.tHead && t.tBodies.length) enhance(t, 'tbl-' + sec.id + '-' + k, params);
      });
    });
    document.body.setAttribute('data-tables-ready', '1');
  });
})();
"""


def _kpis(acc: pl.DataFrame, balanced: bool | None) -> str:
    d = dict(zip(acc["step"], acc["rows"], strict=True))
    items = [("read", d.get("read")), ("rejected", d.get("rejected at ingest")),
             ("dropped", sum(r for s, r in d.items() if s.startswith("dropped"))), ("kept", d.get("kept")),
             ("selected", d.get("selected", d.get("kept")))]
    cells = "".join(f'<div class="kpi"><div class="k">{k}</div><div class="v">{(v or 0):,}</div></div>' for k, v in items)
    if balanced is not None:
        cls = "ok" if balanced else "bad"
        cells += (f'<div class="kpi {cls}"><div class="k">read = kept + dropped + rejected</div>'
                  f'<div class="v">{"balanced" if balanced else "UNBALANCED"}</div></div>')
    return f'<div class="kpis">{cells}</div>'


def report_charts(run: Run | str | Path) -> list[Chart]:
    """Every chart of the report, in order (missing ones included, saying what is missing)."""
    run = _run(run)
    return [plot_funnel(run), plot_score_distributions(run), plot_scores_by_source(run), plot_flags(run),
            plot_lengths(run), plot_cluster_sizes(run), plot_embedding_map(run)]


def _selection_section(run: Run) -> str:
    ex = selection_examples(run)
    if ex.is_empty():
        return selection_html(ex)
    intro = ('<p class="note">Per cluster, the last row the selector took beside the best row it left out '
             "(by the selector's score), then a sample of both sides. Rank 1 was picked first.</p>")
    sample = ex.select("kind", "outcome", "row", "cluster", "rank", "score", "why",
                       pl.col("instruction").str.slice(0, 140).alias("instruction"))
    sample = sample.drop([c for c in ("cluster", "score") if sample[c].null_count() == sample.height])
    return (intro + selection_html(ex) + "<h3>Sample of selection decisions</h3>" + table_html(sample)
            + '<p class="note">Every row with its rank and reason is in the shards (<code>select_rank</code>, '
            "<code>select_reason</code>).</p>")


def render_report(run: Run | str | Path, charts: Sequence[Chart] | None = None) -> str:
    """The self-contained HTML report of a run (images inlined as base64 PNG)."""
    run = _run(run)
    m = run.manifest
    charts = list(charts) if charts is not None else report_charts(run)
    ch = {c.name: c for c in charts}
    acc = accounting(run)
    counts = m.get("counts", {})
    sections: list[tuple[str, str, str]] = []
    missing = [f"{c.title}: {c.missing}" for c in charts if c.missing]

    def chart(name: str) -> str:
        return ch[name].html() if name in ch else ""

    warn = ""
    if run.shards is None:
        warn += (f'<p class="missing"><b>No shards:</b> this run has no <code>shards/</code> (status '
                 f'<code>{html.escape(str(m.get("status")))}</code>); the counts below are what is on disk.</p>')
    off = acc.filter(pl.col("matches_manifest") == False)["step"].to_list()  # noqa: E712 - null means not in the manifest
    if off:
        warn += ('<p class="missing"><b>Counts differ from the manifest</b> (recomputed from the shards) at: '
                 + html.escape(", ".join(off)) + "</p>")
    sections.append(("accounting", "Row accounting",
                     warn + _kpis(acc, counts.get("balanced")) + table_html(acc) + chart("funnel")))
    dr = drop_reasons(run)
    rj = reject_reasons(run)
    sections.append(("reasons", "Drop reasons",
                     (table_html(dr) if not dr.is_empty() else '<p class="missing">No row was dropped.</p>')
                     + "<h3>Rejected at ingest</h3>"
                     + (table_html(rj) if not rj.is_empty() else '<p class="note">No row was rejected.</p>')))
    sections.append(("sources", "Sources", table_html(sources_table(run))))
    st = stages_table(run).drop("params")
    pt = params_table(run)
    sections.append(("stages", "Stages", table_html(st)
                     + "<h3>Parameters</h3>"
                     + (table_html(pt, max_rows=1000, classes="params") if not pt.is_empty()
                        else '<p class="note">No stage has parameters set.</p>')
                     + "<h3>Run settings</h3>" + table_html(settings_table(run), classes="params")))
    summ = score_summary(run, wide=True)
    sections.append(("scores", "Score distributions",
                     chart("scores") + chart("flags")
                     + (("<h3>Mean and median by group</h3>" + table_html(summ, max_rows=400)) if not summ.is_empty() else "")))
    by_src = score_by_source(run, drop_constant=True)
    sections.append(("per-source", "Scores per source",
                     chart("scores_by_source")
                     + ("<h3>Per source and column</h3>" + table_html(by_src, max_rows=1000) if not by_src.is_empty() else "")))
    sections.append(("lengths", "Length distributions", chart("lengths")))
    ct = cluster_table(run)
    sections.append(("clusters", "Clusters and embeddings",
                     chart("clusters") + chart("embedding_map")
                     + (("<h3>Largest clusters</h3>" + table_html(ct, max_rows=20)) if not ct.is_empty() else "")))
    sections.append(("selection", "Selected vs not selected", _selection_section(run)))
    sections.append(("examples", "Examples per drop reason", examples_html(drop_examples(run))))
    sections.append(("rejected", "Rejected rows", reject_examples_html(reject_examples(run))))
    evaluated = _evaluation_section(run.path)
    if evaluated is not None:
        sections.append(("evaluation", "Proof by training (curate evaluate)", evaluated))
    if missing:
        sections.append(("missing", "What this run does not have",
                         "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in missing) + "</ul>"))
    nav = "".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(t)}</h2>{content}</section>' for sid, t, content in sections)
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    head = (f"<h1>Curation run <code>{html.escape(run.run_id)}</code></h1>"
            f'<p class="meta">status <code>{html.escape(str(m.get("status")))}</code> · created '
            f'{html.escape(str(m.get("created", "")))} · finished {html.escape(str(m.get("finished", "–")))} · '
            f'config hash <code>{html.escape(str(m.get("config_hash", "")))}</code> · total '
            f'{(m.get("timings") or {}).get("total_s", "–")} s<br>{html.escape(versions)}<br>'
            f'report generated {datetime.now(timezone.utc).isoformat(timespec="seconds")}</p><nav>{nav}</nav>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Run {html.escape(run.run_id)} · sft-curate report</title><style>{_CSS}</style>"
            f"<script>{_SCRIPT}</script></head><body><main>{head}{body}</main></body></html>")


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run>/figures/*.png`` and ``<run>/report.html``; link the report from the manifest.

    The manifest is re-read just before it is rewritten (atomically) so that only the ``report``
    and ``figures`` keys change.
    """
    run = load_run(run_dir)
    charts = report_charts(run)
    fig_dir = run.path / "figures"
    figures = []
    for i, c in enumerate(charts):
        p = c.save(fig_dir / f"{i:02d}-{c.name}.png")
        if p is not None:
            figures.append(str(p.relative_to(run.path)))
    html_text = render_report(run, charts)
    out = run.path / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest["report"] = "report.html"
    manifest["figures"] = figures
    write_json_atomic(manifest, run.path / "manifest.json")
    return out


def _evaluation_section(run_dir: Path) -> str | None:
    """The ``curate evaluate`` comparison of an evaluated run (None when it was not evaluated, or the
    training extra that reads it is not installed)."""
    if not (run_dir / "evaluation.json").is_file():
        return None
    try:
        from pipeline.evaluate import evaluation_section_html
    except ImportError:
        return None
    return evaluation_section_html(run_dir)
