"""Example rows of one run, and why each got its outcome.

* :func:`drop_examples`: a few dropped rows per rule, each beside what it matched (the kept
  duplicate, the benchmark item) or the stage's own column values.
* :func:`selection_examples`: selected vs kept-but-not-selected rows with their rank, cluster and
  the selector's score, including per cluster the last row selected beside the best row left out.
* :func:`reject_examples`: rows rejected at ingest, per reason, with the offending input.

Each has an HTML renderer (``*_html``) used by the report and by the notebooks.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.inspect.run import Run, _run, _stage_label, stage_of_reason


def esc(text: str) -> str:
    """HTML-escape a row's text for the report. ``://`` is written as character references too: a
    row's URLs show as text, and the file's source names no address (it loads nothing from one)."""
    return html.escape(text).replace("://", ":&#47;&#47;")


def _clip(expr: pl.Expr, n: int) -> pl.Expr:
    return pl.when(expr.str.len_chars() > n).then(expr.str.slice(0, n) + pl.lit(" …")).otherwise(expr)


def _texts(lf: pl.LazyFrame, keys: pl.DataFrame, max_chars: int) -> pl.DataFrame:
    """instruction/response text of the rows named by (source, source_row) in ``keys``."""
    from pipeline.text import text_expr

    if keys.is_empty():
        return pl.DataFrame(schema={"source": pl.String, "source_row": pl.Int64, "instruction": pl.String,
                                    "response": pl.String})
    rows = keys["source_row"].unique().to_list()
    srcs = keys["source"].unique().to_list()
    got = (lf.filter(pl.col("source_row").is_in(rows) & pl.col("source").is_in(srcs))
           .select("source", "source_row", _clip(text_expr("instruction"), max_chars).alias("instruction"),
                   _clip(text_expr("response"), max_chars).alias("response"))
           .collect())
    return got.join(keys.select("source", "source_row").unique(), on=["source", "source_row"], how="semi")


def _benchmark_files(run: Run) -> dict[str, tuple[str, str]]:
    """Benchmark label -> (file, record format), from the decontamination stage's params.

    Labels as :mod:`pipeline.stages.decontam` makes them: the benchmark's ``name``, else the file
    name without its extensions.
    """
    out: dict[str, tuple[str, str]] = {}

    def label(path: str) -> str:
        base = Path(path).name
        for suf in (".gz", ".jsonl", ".json", ".ndjson", ".parquet"):
            base = base.removesuffix(suf)
        return base

    for s in run.manifest.get("stages", []):
        if not s["name"].startswith("decontam"):
            continue
        for b in (s.get("params") or {}).get("benchmarks") or []:
            b = {"path": b} if isinstance(b, str) else b
            if isinstance(b, dict) and isinstance(b.get("path"), str):
                out[str(b.get("name") or label(b["path"]))] = (b["path"], str(b.get("format") or "auto"))
    return out


def _benchmark_items(run: Run, matches: Sequence[str], max_chars: int) -> dict[str, tuple[str, str]]:
    """``label:item`` -> (instruction, response) of the benchmark items named, read with the product's reader.

    An item is named by its ``id`` / ``task_id`` field, else its record index, as the stage names it.
    """
    from pipeline.io.readers import read_table
    from pipeline.text import text_expr

    files = _benchmark_files(run)
    wanted: dict[str, set[str]] = {}
    for m in matches:
        name, _, item = m.partition(":")
        wanted.setdefault(name, set()).add(item)
    out: dict[str, tuple[str, str]] = {}
    for name, items in wanted.items():
        path, fmt = files.get(name, (None, "auto"))
        if path is None or not Path(path).exists():
            continue
        try:
            rows, _rej = read_table(path, fmt=fmt, name=name)
        except Exception:  # an unreadable benchmark only costs the example its right-hand side
            continue
        from pipeline.stages.decontam import item_id_expr

        hit = rows.select(
            item_id_expr(rows.columns).alias("_item"),
            _clip(text_expr("instruction"), max_chars).alias("i"), _clip(text_expr("response"), max_chars).alias("r"),
        ).filter(pl.col("_item").is_in(list(items)))
        for item, i, r in hit.iter_rows():
            out[f"{name}:{item}"] = (i, r)
    return out


def drop_examples(run: Run | str | Path, per_reason: int = 3, max_chars: int = 400, seed: int = 0) -> pl.DataFrame:
    """A few dropped rows per rule, each beside what it matched.

    For a duplicate (``dup_of``), the kept row it duplicated (by ``dup_of_source``/``dup_of_row``
    when present, else the first kept row with id ``dup_of``); for a contaminated row
    (``decontam_match``), the benchmark item (read from the file in the stage's params); for other
    rules, the stage's own column values. Columns: reason, row, instruction, response, match_kind,
    match_ref, match_instruction, match_response, scores.
    """
    run = _run(run)
    schema = {"reason": pl.String, "row": pl.String, "instruction": pl.String, "response": pl.String,
              "match_kind": pl.String, "match_ref": pl.String, "match_instruction": pl.String,
              "match_response": pl.String, "scores": pl.String}
    if run.shards is None or not run.has("keep", "drop_reason"):
        return pl.DataFrame(schema=schema)
    extra = [c for c in ("dup_of", "dup_kind", "dup_of_source", "dup_of_row", "decontam_match") if run.has(c)]
    names = run.stage_names
    dropped = run.frame(["source", "source_row", "id", "drop_reason", *extra], with_group=False).filter(
        pl.col("drop_reason").is_not_null())
    if dropped.is_empty():
        return pl.DataFrame(schema=schema)
    dropped = dropped.with_columns(pl.col("drop_reason").str.split(":").list.head(2).list.join(":").alias("rule"))
    rs = run.reason_stages(dropped["drop_reason"]).with_columns(pl.col("_stage").fill_null(len(names)))
    picks = (dropped.join(rs, on="drop_reason", how="left")
             .with_columns(pl.int_range(pl.len()).shuffle(seed).over("rule").alias("_k"))
             .filter(pl.col("_k") < per_reason).sort("_stage", "rule", "_k").drop("_stage"))
    texts = _texts(run.shards, picks.select("source", "source_row"), max_chars)
    picks = picks.join(texts, on=["source", "source_row"], how="left")
    # what each row matched
    match_kind = [None] * picks.height
    match_ref = [None] * picks.height
    keeper_keys: list[tuple[str, int]] = []
    if "dup_of" in extra:
        if "dup_of_source" in extra and "dup_of_row" in extra:
            keeper_keys = [(s, int(r)) for s, r in picks.select("dup_of_source", "dup_of_row").drop_nulls().iter_rows()]
        else:
            ids = picks["dup_of"].drop_nulls().unique().to_list()
            if ids:
                first = (run.shards.filter(pl.col("id").is_in(ids) & pl.col("keep")).select("id", "source", "source_row")
                         .collect().unique("id", keep="first", maintain_order=True))
                picks = picks.join(first.rename({"source": "dup_of_source", "source_row": "dup_of_row"}),
                                   left_on="dup_of", right_on="id", how="left")
                keeper_keys = [(s, int(r)) for s, r in first.select("source", "source_row").iter_rows()]
    keepers = _texts(run.shards, pl.DataFrame(keeper_keys, schema={"source": pl.String, "source_row": pl.Int64},
                                              orient="row"), max_chars)
    keeper_map = {(s, r): (i, t) for s, r, i, t in keepers.iter_rows()}
    bench = _benchmark_items(run, picks["decontam_match"].drop_nulls().unique().to_list(), max_chars) \
        if "decontam_match" in picks.columns else {}
    mi: list[str | None] = [None] * picks.height
    mr: list[str | None] = [None] * picks.height
    scores: list[str] = []
    rows = picks.to_dicts()
    for k, r in enumerate(rows):
        if r.get("dup_of"):
            src, srow = r.get("dup_of_source"), r.get("dup_of_row")
            match_kind[k] = f"duplicate ({r.get('dup_kind') or 'dup'})"
            match_ref[k] = f"{src}:{srow}" if src is not None else f"id {r['dup_of']}"
            hit = keeper_map.get((src, int(srow))) if src is not None and srow is not None else None
            if hit:
                mi[k], mr[k] = hit
            else:
                mi[k] = f"(keeper id {r['dup_of']} is not in this run: an earlier run's row, or itself dropped)"
        elif r.get("decontam_match"):
            match_kind[k] = "benchmark item"
            match_ref[k] = r["decontam_match"]
            b = bench.get(r["decontam_match"])
            if b:
                mi[k], mr[k] = b
            else:
                mi[k] = "(benchmark file not readable here)"
    # the stage's own columns as key=value, to show why a rule fired
    idx = [stage_of_reason(r["drop_reason"], names, run.reason_prefixes) for r in rows]
    stage_cols = {i: [c for c in run.stage_columns.get(_stage_label(i, names), []) if run.has(c)] for i in set(idx)}
    want = sorted({c for cs in stage_cols.values() for c in cs})
    vals = (run.shards.filter(pl.col("source_row").is_in(picks["source_row"].unique().to_list()))
            .select("source", "source_row", *want).collect()
            .join(picks.select("source", "source_row"), on=["source", "source_row"], how="semi")) if want else None
    vmap = {(d["source"], d["source_row"]): d for d in vals.to_dicts()} if vals is not None else {}
    for r, i in zip(rows, idx, strict=True):
        d = vmap.get((r["source"], r["source_row"]), {})
        cols = [c for c in stage_cols.get(i, []) if d.get(c) is not None and not c.endswith("_hash")
                and c not in ("dup_of", "dup_of_source", "dup_of_row", "dup_kind", "decontam_match")]
        # the columns the rule names (``length:response_tokens<8`` -> len_response_tokens), else all
        rule = r["drop_reason"].split(":")[1] if ":" in r["drop_reason"] else ""
        token = rule.split("<")[0].split(">")[0].split("=")[0]
        named = [c for c in cols if token and token in c]
        scores.append(", ".join(f"{c}={_fmt(d.get(c))}" for c in (named or cols)[:8]))
    return pl.DataFrame(
        {"reason": picks["drop_reason"], "row": [f"{r['source']}:{r['source_row']}" for r in rows],
         "instruction": picks["instruction"], "response": picks["response"], "match_kind": match_kind,
         "match_ref": match_ref, "match_instruction": mi, "match_response": mr, "scores": scores},
        schema=schema,
    ).with_columns(picks["rule"].alias("rule")).select("rule", *schema)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) > 40:
        return v[:16] + "…"
    return str(v)


def examples_html(ex: pl.DataFrame) -> str:
    """The rows of :func:`drop_examples` as side-by-side cards (dropped row | what it matched), by rule."""
    if ex.is_empty():
        return '<p class="missing">No dropped rows.</p>'
    out = []
    for rule, g in ex.group_by("rule", maintain_order=True):
        out.append(f"<h3>{esc(str(rule[0]))}</h3>")
        for r in g.iter_rows(named=True):
            left = (f'<div class="card drop"><div class="tag">dropped · {esc(r["row"])} · '
                    f'{esc(r["reason"] or "")}</div>'
                    f'<div class="lbl">instruction</div><pre>{esc(r["instruction"] or "")}</pre>'
                    f'<div class="lbl">response</div><pre>{esc(r["response"] or "")}</pre></div>')
            if r["match_kind"]:
                right = (f'<div class="card match"><div class="tag">{esc(r["match_kind"])} · '
                         f'{esc(r["match_ref"] or "")}</div>'
                         f'<div class="lbl">instruction</div><pre>{esc(r["match_instruction"] or "")}</pre>'
                         f'<div class="lbl">response</div><pre>{esc(r["match_response"] or "")}</pre></div>')
            else:
                right = (f'<div class="card match"><div class="tag">why · {esc(r["reason"] or "")}</div>'
                         f'<pre>{esc((r["scores"] or "").replace(", ", chr(10)))}</pre></div>')
            out.append(f'<div class="pair">{left}{right}</div>')
    return "".join(out)



# ---------------------------------------------------------------- selected vs not selected

_SELECTION_SCHEMA = {"pair": pl.Int64, "kind": pl.String, "outcome": pl.String, "row": pl.String,
                     "cluster": pl.Int64, "rank": pl.Int64, "score": pl.String, "why": pl.String,
                     "instruction": pl.String, "response": pl.String}


def selector_score_columns(run: Run | str | Path) -> list[str]:
    """The numeric columns the run's selectors rank by: their params that name a stored numeric column
    (``score`` of kMQ, ``column`` of top-k, ``by`` of Long-is-More, ``rating`` of DS2; the token
    column of a token budget)."""
    run = _run(run)
    out: list[str] = []
    stages = run.manifest.get("stages", [])
    for i in sorted(run.selector_indices):
        p = stages[i].get("params") or {}
        for k, v in p.items():
            if k == "token_column" and p.get("budget_unit") != "tokens":
                continue
            if isinstance(v, str) and v in run.schema and run.schema[v].is_numeric() and v not in out:
                out.append(v)
    return out


def selection_examples(run: Run | str | Path, pairs: int = 4, per_kind: int = 4, max_chars: int = 300,
                       seed: int = 0) -> pl.DataFrame:
    """Selected rows beside kept rows that were not selected, with rank, cluster, score and why.

    Per cluster (the ``pairs`` largest clusters with rows on both sides; the whole pool as one
    group when the run has no clusters), the last row selected (highest ``select_rank``) beside the
    best row left out (highest selector score, else a random one): ``pair`` numbers them. Then
    ``per_kind`` rows of each of: the top-ranked selected, random selected, random not selected
    (``pair`` null), each row once. ``cluster`` is the selector's ``cluster_column`` or the run's
    ``cluster`` column, else the cluster the selector names in ``select_reason`` (kMQ's own k-means).
    Empty when no selector ran.

    Columns: pair, kind, outcome, row, cluster, rank, score (the selector's score columns as
    ``name=value``), why, instruction, response.
    """
    run = _run(run)
    if run.shards is None or not run.has_selector or not run.has("keep", "selected"):
        return pl.DataFrame(schema=_SELECTION_SCHEMA)
    scores = selector_score_columns(run)
    # the clusters the selector used: its ``cluster_column`` param, else the run's ``cluster`` column
    stages = run.manifest.get("stages", [])
    named = [(stages[i].get("params") or {}).get("cluster_column") for i in sorted(run.selector_indices)]
    cluster = next((c for c in [*named, "cluster"] if isinstance(c, str) and run.has(c)), None)
    scores = [c for c in scores if c != cluster]
    cols = ["source", "source_row", "selected", *[c for c in ("select_rank", "select_reason") if run.has(c)],
            *([cluster] if cluster else []), *scores]
    df = run.shards.filter(pl.col("keep")).select(list(dict.fromkeys(cols))).collect()
    if df.is_empty():
        return pl.DataFrame(schema=_SELECTION_SCHEMA)
    rc = (pl.col("select_reason").str.extract(r"cluster=(-?\d+)", 1).cast(pl.Int64, strict=False)
          if "select_reason" in df.columns else pl.lit(None, pl.Int64))
    df = df.with_columns(
        pl.col("selected").fill_null(False),
        (pl.col(cluster).cast(pl.Int64, strict=False) if cluster else rc).alias("_cl"),
        (pl.col("select_rank") if "select_rank" in df.columns else pl.lit(None, pl.Int64)).alias("_rank"),
        (pl.col(scores[0]).cast(pl.Float64) if scores else pl.lit(None, pl.Float64)).alias("_score"),
        pl.int_range(pl.len()).shuffle(seed).alias("_rnd"),
    )
    n_sel, n_cand = int(df["selected"].sum()), df.height
    # per cluster: how many selected, and the range of the selector's score among them
    g = df.group_by("_cl").agg(
        pl.len().alias("n"), pl.col("selected").sum().alias("n_sel"),
        pl.col("_score").filter(pl.col("selected")).min().alias("smin"),
        pl.col("_score").filter(pl.col("selected")).max().alias("smax"))
    stats = {r["_cl"]: r for r in g.to_dicts()}
    has_cl = df["_cl"].null_count() < df.height

    picks: list[tuple[int | None, str, dict[str, Any]]] = []
    both = g.filter((pl.col("n_sel") > 0) & (pl.col("n_sel") < pl.col("n"))).sort(["n", "_cl"], descending=[True, False])
    for k, cl in enumerate(both["_cl"].head(pairs).to_list()):
        sub = df.filter(pl.col("_cl").eq_missing(cl))
        last = sub.filter(pl.col("selected")).sort(["_rank", "_rnd"], descending=[True, False], nulls_last=True).head(1)
        out_ = sub.filter(~pl.col("selected")).sort(["_score", "_rnd"], descending=[True, False], nulls_last=True).head(1)
        where = f"cluster {cl}" if has_cl else "the pool"
        picks.append((k, f"last selected in {where}", last.row(0, named=True)))
        picks.append((k, f"best left out in {where}" if scores else f"left out in {where}", out_.row(0, named=True)))
    sel, rest = df.filter(pl.col("selected")), df.filter(~pl.col("selected"))
    seen = {(r["source"], r["source_row"]) for _, _, r in picks}
    for kind, frame in (("top ranked", sel.sort(["_rank", "_rnd"], nulls_last=True)),
                        ("random selected", sel.sort("_rnd")), ("random not selected", rest.sort("_rnd"))):
        n = 0
        for r in frame.head(per_kind + len(seen)).iter_rows(named=True):
            if n < per_kind and (r["source"], r["source_row"]) not in seen:
                seen.add((r["source"], r["source_row"]))
                picks.append((None, kind, r))
                n += 1
    if not picks:
        return pl.DataFrame(schema=_SELECTION_SCHEMA)
    keys = pl.DataFrame([(r["source"], r["source_row"]) for _, _, r in picks],
                        schema={"source": pl.String, "source_row": pl.Int64}, orient="row")
    texts = {(s, r): (i, t) for s, r, i, t in _texts(run.shards, keys, max_chars).iter_rows()}
    selector = _stage_label(max(run.selector_indices), run.stage_names) if run.selector_indices else "the selector"
    rows = []
    for pair, kind, r in picks:
        st = stats.get(r["_cl"], {})
        where = f"cluster {r['_cl']}" if r["_cl"] is not None else "the pool"
        score = ", ".join(f"{c}={_fmt(r.get(c))}" for c in scores)
        if r["selected"]:
            why = (f"selected by {selector}, rank {r['_rank']:,} of {n_sel:,} selected"
                   if r["_rank"] is not None else f"selected by {selector}")
            if r.get("select_reason"):
                why += f" ({r['select_reason']})"
        else:
            why = f"kept but not selected: {selector} took {n_sel:,} of {n_cand:,} kept rows"
            if st and has_cl:
                why += f"; {st['n_sel']:,} of {st['n']:,} in {where}"
            if st and scores and st.get("smin") is not None:
                why += (", whose selected rows have " if has_cl else "; the selected rows have ") + \
                    f"{scores[0]} {_fmt(st['smin'])} to {_fmt(st['smax'])}"
        i, t = texts.get((r["source"], r["source_row"]), (None, None))
        rows.append({"pair": pair, "kind": kind, "outcome": "selected" if r["selected"] else "not selected",
                     "row": f"{r['source']}:{r['source_row']}", "cluster": r["_cl"], "rank": r["_rank"],
                     "score": score or None, "why": why, "instruction": i, "response": t})
    return pl.DataFrame(rows, schema=_SELECTION_SCHEMA)


def _card(cls: str, tag: str, instruction: str | None, response: str | None, note: str = "") -> str:
    return (f'<div class="card {cls}"><div class="tag">{esc(tag)}</div>'
            + (f'<div class="why">{esc(note)}</div>' if note else "")
            + f'<div class="lbl">instruction</div><pre>{esc(instruction or "")}</pre>'
            f'<div class="lbl">response</div><pre>{esc(response or "")}</pre></div>')


def selection_html(ex: pl.DataFrame) -> str:
    """The pairs of :func:`selection_examples` as side-by-side cards (selected | left out)."""
    if ex.is_empty():
        return '<p class="missing">No selector ran in this run (every kept row is in the output).</p>'
    out = []
    for _pair, g in ex.filter(pl.col("pair").is_not_null()).group_by("pair", maintain_order=True):
        cards = []
        for r in g.iter_rows(named=True):
            bits = [r["outcome"], r["row"]] + ([f"rank {r['rank']:,}"] if r["rank"] is not None else []) \
                + ([f"cluster {r['cluster']}"] if r["cluster"] is not None else []) + ([r["score"]] if r["score"] else [])
            cards.append(_card("sel" if r["outcome"] == "selected" else "notsel", f"{r['kind']} · " + " · ".join(bits),
                               r["instruction"], r["response"], r["why"]))
        out.append(f'<div class="pair">{"".join(cards)}</div>')
    return "".join(out)


# ---------------------------------------------------------------- rejected at ingest

_REJECT_SCHEMA = {"source": pl.String, "source_row": pl.Int64, "reason": pl.String, "rows_with_reason": pl.Int64,
                  "raw": pl.String}


def reject_examples(run: Run | str | Path, per_reason: int = 3, max_reasons: int = 12, max_chars: int = 400,
                    seed: int = 0) -> pl.DataFrame:
    """Rows rejected at ingest: up to ``per_reason`` per reason (the ``max_reasons`` most frequent),
    with where they were (source, source_row) and the offending input (``raw``, clipped).

    Reasons that differ only in a position (``messages[2]: missing content``) are grouped.
    Columns: source, source_row, reason, rows_with_reason, raw.
    """
    run = _run(run)
    if run.rejects is None:
        return pl.DataFrame(schema=_REJECT_SCHEMA)
    cols = [c for c in ("source", "source_row", "reason", "raw") if c in run.rejects.collect_schema()]
    rej = run.rejects.select(cols).collect()
    if rej.is_empty():
        return pl.DataFrame(schema=_REJECT_SCHEMA)
    if "raw" not in rej.columns:
        rej = rej.with_columns(pl.lit(None, pl.String).alias("raw"))
    rej = rej.with_columns(pl.col("reason").str.replace_all(r"\[\d+\]", "[i]").alias("_kind"))
    top = rej.group_by("_kind").len().sort(["len", "_kind"], descending=[True, False]).head(max_reasons)
    picked = (rej.join(top, on="_kind").with_columns(pl.int_range(pl.len()).shuffle(seed).over("_kind").alias("_k"))
              .filter(pl.col("_k") < per_reason).sort(["len", "_kind", "source", "source_row"],
                                                        descending=[True, False, False, False]))
    return picked.select("source", pl.col("source_row").cast(pl.Int64), "reason",
                         pl.col("len").cast(pl.Int64).alias("rows_with_reason"),
                         _clip(pl.col("raw"), max_chars).alias("raw"))


def reject_examples_html(ex: pl.DataFrame) -> str:
    """The rows of :func:`reject_examples` as cards: where, why, and the input as it came."""
    if ex.is_empty():
        return '<p class="note">No row was rejected at ingest.</p>'
    out = []
    for r in ex.iter_rows(named=True):
        out.append(f'<div class="card rej"><div class="tag">rejected · {esc(r["source"])}:{r["source_row"]} · '
                   f'{esc(r["reason"])}</div><div class="why">{r["rows_with_reason"]:,} row(s) with this '
                   f'reason</div><pre>{esc(r["raw"] or "(no input kept)")}</pre></div>')
    return '<div class="cards">' + "".join(out) + "</div>"
