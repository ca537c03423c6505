"""Full CPU pipeline at scale: a synthetic pool of N rows built from real data, through the Prefect flow.

**Pool.** Base rows are real conversations from ../shared/data/real (T0 templated, AlpacaEval judged,
ShareGPT 17k multi-turn, GSM8K train, Code Alpaca, new Code Alpaca, GPTeacher codegen/roleplay/
toolformer, FastChat, Self-Instruct seeds; 127k rows), exact- and MinHash-deduplicated once (91k
left, cached as ``<work>/bases-v1.parquet``) so that every duplicate in the pool is a planted one.
A pool of N rows holds, shuffled:

* originals: the bases in a random order; past the 91k bases, copies of a base with 50% of the
  alphabetic words substituted (distinct rows, as in benchmarks/dedup.py, but punctuation, numbers
  and code tokens kept so that short answers keep their length);
* 5% exact duplicates of originals (half verbatim, half with formatting edits: case, commas,
  spacing, a trailing ``!``; equal after normalisation, checked with the reference normaliser);
* 5% near duplicates (2-5% of the words substituted, inserted, deleted or swapped); each copy's true
  5-gram shingle Jaccard to its original is computed, and those >= 0.7 are "expected" for MinHash;
* N/2000 rows (at least 10; a fifth HumanEval) that copy a GSM8K test question or a HumanEval prompt
  (half verbatim, half behind a one-line preamble), with their reference answer as the response;
* N/10000 rows (at least 5) that are malformed (truncated JSON, missing fields, unknown roles,
  empty conversations, no assistant turn, wrong types), so rejects are non-zero.

Each row carries its label in an extra ``synth`` field (it ends up as a ``synth`` column; ids hash only the
conversation). Rows are written in three formats, ``--file-rows`` (50k) records per file: Alpaca
JSONL.gz and messages Parquet (single-turn rows, half each), ShareGPT JSONL.gz (multi-turn rows);
malformed rows go to the JSONL files.

**Run.** Each size gets a fresh work dir (``<work>/n<N>``) and three fresh subprocesses: synthesis,
the run (``flows.curate.run_flow`` against one Prefect API server started by the driver, on
127.0.0.1 with ``PREFECT_HOME`` in a temp dir), and the scoring of found vs planted. The config
(written per size) runs length, heuristics, exact dedup, MinHash dedup (0.7), n-gram
decontamination against GSM8K test + HumanEval, then, only at sizes <= ``--embed-max-rows``,
SemDeDup and k-means clustering on MiniLM embeddings (CPU MiniLM embeds ~25-250 texts/s on two
cores: ~1 h per 100k rows), and Long-is-More with ``--budget``. The HTML report is off in the config
and timed on its own after the flow (``write_report``).

**Figures.** Per stage: seconds from the run's ``manifest.json`` (summed over shard steps; shard
steps of one segment run two at a time on the threads task runner, so a sum can exceed its share of
the wall) and pool rows / second. Per phase (ingest, each segment of per-shard steps, each global
step, finalize, report): wall seconds and peak RSS of the run process, from a 0.2 s VmRSS sampler
and the flow's own log lines. Whole run: wall, VmHWM of the run process (the threads task runner
runs everything in it), and ``ru_maxrss`` of its children, shown apart (the Prefect API server is
the driver's child and is not counted). Then the accounting line and found vs planted; the last
columns are the largest size over the smallest.

    .venv/bin/python benchmarks/scale.py --sizes 20000                 # validation (embeddings on)
    .venv/bin/python benchmarks/scale.py --sizes 100000,1000000        # default
        [--work /tmp/scale-bench] [--embed-max-rows 20000] [--budget 10000] [--keep] [--json out.json]
    .venv/bin/python benchmarks/scale.py --tables-from out.json      # the tables again
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import peak_rss_mb  # benchmarks/ is on sys.path (the script's folder)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_spec = importlib.util.spec_from_file_location("bench_dedup", Path(__file__).with_name("dedup.py"))
_dd = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_dd)  # type: ignore[union-attr]
edit_words, py_conversation, fast_shingles, jaccard = _dd.edit_words, _dd.py_conversation, _dd.fast_shingles, _dd.jaccard
THRESHOLD = _dd.THRESHOLD  # MinHash threshold of the config, and of the "expected" label of near copies

BASE_FILES = ["t0_templated_50k.parquet", "alpaca_eval_judged.parquet", "sharegpt_17k.parquet", "gsm8k_train.jsonl.gz",
              "code_alpaca_2k.json.gz", "new_codealpaca.json.gz", "gpteacher_codegen.json.gz",
              "gpteacher_roleplay.json.gz", "gpteacher_toolformer_dedupe_only.json.gz",
              "fastchat_dummy_conversation.json.gz", "self_instruct_seed_tasks.jsonl.gz"]
BENCHMARKS = {"gsm8k_test": "gsm8k_test.jsonl.gz", "humaneval": "humaneval.jsonl.gz"}
PREAMBLES = ["Solve the following problem.\n\n", "Here is a task for you:\n", "Please answer this:\n\n"]
NEAR_OPS = ["substitute", "insert", "delete", "swap"]
NEAR_FRACTIONS = [0.02, 0.03, 0.05]
MALFORMED = [
    b'{"instruction": "Summarise the following text in one sentence.", "input": "The quick',  # truncated JSON
    b'{"instruction": "Name three primary colours."}',  # Alpaca without output
    b'{"conversations": [{"from": "narrator", "value": "Once upon a time"}, {"from": "gpt", "value": "Go on."}]}',
    b'{"conversations": []}',
    b"[1, 2, 3]",
    b'{"messages": [{"role": "user", "content": "Hello, is anyone there?"}]}',  # no assistant turn
    b'{"prompt": 42, "completion": "forty-two"}',
]


def fast_norm(text: str) -> str:
    """:func:`benchmarks.dedup.py_normalize`, with its ASCII fast path (same result)."""
    if text.isascii():
        return " ".join(text.translate(_dd._ASCII_FOLD).lower().split())
    return _dd.py_normalize(text)


def vm_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def children_rss_mb() -> float:
    """``ru_maxrss`` of the largest waited-for child. A child forked from this process starts with
    this process's RSS as its own, so a short helper subprocess reads as large as its parent was."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def vary(msgs: list[dict], rng: random.Random, vocab: list[str], f: float = 0.5) -> list[dict]:
    """A distinct row from a base: ``f`` of each message's alphabetic words substituted. Unlike
    ``edit_words(..., "substitute")`` this keeps punctuation, numbers and code tokens, so a short answer
    ("Yes.", "(B)") keeps its length in words and the length stage sees the bases' distribution."""
    out, changed = [], False
    for m in msgs:
        w = m["content"].split(" ")
        idx = [i for i, x in enumerate(w) if x.isalpha()]
        for i in rng.sample(idx, round(f * len(idx))):
            w[i] = rng.choice(vocab)
            changed = True
        out.append({"role": m["role"], "content": " ".join(w)})
    if not changed:  # every message too short to touch: change one word of the longest anyway
        j = max(range(len(out)), key=lambda i: len(out[i]["content"]))
        w = out[j]["content"].split(" ")
        idx = [i for i, x in enumerate(w) if x.isalpha()] or [len(w) - 1]
        w[rng.choice(idx)] = rng.choice(vocab)
        out[j] = {"role": out[j]["role"], "content": " ".join(w)}
    return out


def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------- the pool


def load_bases(real: Path, work: Path) -> list[list[dict]]:
    """Real conversations, exact- and MinHash-deduplicated once (cached under ``work``)."""
    import polars as pl

    path = work / "bases-v1.parquet"
    if not path.exists():
        from pipeline.io.readers import read_table
        from pipeline.io.shards import write_parquet_atomic
        from pipeline.stages import exact_dedup, minhash_dedup

        t = time.perf_counter()
        df = pl.concat([read_table(str(real / f))[0] for f in BASE_FILES], how="vertical_relaxed")
        out = minhash_dedup(exact_dedup(df, key="conversation"), threshold=THRESHOLD)
        kept = out.filter(pl.col("keep")).select("messages", "source")
        work.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(kept, path)
        print(f"bases: {df.height:,} real rows from {len(BASE_FILES)} files -> {kept.height:,} after exact+MinHash "
              f"dedup ({time.perf_counter() - t:.0f}s, cached in {path})", file=sys.stderr, flush=True)
    return pl.read_parquet(path, columns=["messages"])["messages"].to_list()


def load_bench_items(real: Path) -> list[tuple[str, int, list[dict]]]:
    from pipeline.io.readers import read_table

    items = []
    for name, f in BENCHMARKS.items():
        rows, _ = read_table(str(real / f))
        items += [(name, i, m) for i, m in enumerate(rows["messages"].to_list())]
    return items


class _Files:
    """Rolling output files: Alpaca/ShareGPT JSONL.gz, messages Parquet; ``file_rows`` records each."""

    def __init__(self, out: Path, file_rows: int) -> None:
        self.out, self.file_rows = out, file_rows
        self.jsonl: dict[str, Any] = {}
        self.count: dict[str, int] = {}
        self.index: dict[str, int] = {}
        self.parquet: list[tuple[list[dict], str]] = []
        self.files: list[dict[str, Any]] = []

    def _roll(self, kind: str) -> None:
        i = self.index.get(kind, 0)
        self.index[kind] = i + 1
        self.count[kind] = 0
        path = self.out / f"{kind}-{i:03d}.jsonl.gz"
        self.jsonl[kind] = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 - closed on roll/close
        self.files.append({"path": str(path), "format": kind, "rows": 0})

    def line(self, kind: str, data: bytes) -> None:
        if kind not in self.jsonl or self.count[kind] >= self.file_rows:
            if kind in self.jsonl:
                self.jsonl[kind].close()
            self._roll(kind)
        self.jsonl[kind].write(data + b"\n")
        self.count[kind] += 1
        next(f for f in reversed(self.files) if f["format"] == kind)["rows"] += 1

    def message_row(self, msgs: list[dict], tag: str) -> None:
        self.parquet.append((msgs, tag))
        if len(self.parquet) >= self.file_rows:
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import polars as pl

        if not self.parquet:
            return
        i = self.index.get("messages", 0)
        self.index["messages"] = i + 1
        path = self.out / f"messages-{i:03d}.parquet"
        pl.DataFrame({"messages": [m for m, _ in self.parquet], "synth": [t for _, t in self.parquet]},
                     schema={"messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
                             "synth": pl.String}).write_parquet(path)
        self.files.append({"path": str(path), "format": "messages", "rows": len(self.parquet)})
        self.parquet = []

    def close(self) -> None:
        for f in self.jsonl.values():
            f.close()
        self._flush_parquet()


def _single_turn(msgs: list[dict]) -> bool:
    roles = [m["role"] for m in msgs]
    return roles in (["user", "assistant"], ["system", "user", "assistant"])


def _write_row(files: _Files, msgs: list[dict], tag: str, rng: random.Random) -> None:
    import orjson

    if not _single_turn(msgs):
        conv = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                for m in msgs]
        files.line("sharegpt", orjson.dumps({"conversations": conv, "synth": tag}))
    elif rng.random() < 0.5:
        rec = {"instruction": msgs[-2]["content"], "input": "", "output": msgs[-1]["content"], "synth": tag}
        if len(msgs) == 3:
            rec["system"] = msgs[0]["content"]
        files.line("alpaca", orjson.dumps(rec))
    else:
        files.message_row(msgs, tag)


def synth_pool(real: Path, work: Path, n: int, file_rows: int, seed: int = 0) -> dict[str, Any]:
    """Write the pool of ``n`` rows under ``<work>/n<N>/pool`` plus ``truth.parquet``; a summary."""
    import polars as pl

    t0 = time.perf_counter()
    bases = load_bases(real, work)
    bench = load_bench_items(real)
    t_load = time.perf_counter() - t0
    out = work / f"n{n}" / "pool"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_mal = max(5, n // 10_000)
    n_con = min(max(10, n // 2_000), len(bench))
    n_exact = round(0.05 * n)
    n_near = round(0.05 * n)
    n_orig = n - n_mal - n_con - n_exact - n_near
    if n_orig < n_exact + n_near:
        raise SystemExit(f"--sizes: {n} rows is too small")
    order = rng.sample(range(len(bases)), len(bases))
    vocab = [w for m in bases[:3000] for t in m for w in t["content"].split() if w.isalpha()][:100_000]

    def original(k: int) -> list[dict]:
        m = bases[order[k % len(bases)]]
        return m if k < len(bases) else vary(m, random.Random(k * 1_000_003 + seed), vocab)

    targets = rng.sample(range(n_orig), n_exact + n_near)
    he = [i for i, b in enumerate(bench) if b[0] == "humaneval"]
    n_he = min(len(he), max(2, n_con // 5))  # a fifth HumanEval prompts, the rest GSM8K test questions
    con_items = rng.sample(he, n_he) + rng.sample([i for i, b in enumerate(bench) if b[0] != "humaneval"], n_con - n_he)
    # the row stream: ("o", k) originals, ("e", j) exact copies, ("n", j) near copies, ("c", j), ("m", j)
    stream = ([("o", k) for k in range(n_orig)] + [("e", j) for j in range(n_exact)]
              + [("n", j) for j in range(n_near)] + [("c", j) for j in range(n_con)] + [("m", j) for j in range(n_mal)])
    rng.shuffle(stream)
    files = _Files(out, file_rows)
    truth: list[dict[str, Any]] = []
    for kind, j in stream:
        if kind == "o":
            _write_row(files, original(j), f"o{j}", rng)
        elif kind == "e":
            k = targets[j]
            base = original(k)
            fmt = j % 2 == 1
            msgs = ([{"role": m["role"], "content": edit_words(m["content"], "format", 0.0, rng, vocab)} for m in base]
                    if fmt else base)
            same = not fmt or all(fast_norm(a["content"]) == fast_norm(b["content"]) for a, b in zip(base, msgs, strict=True))
            truth.append({"tag": f"e{j}", "kind": "exact-format" if fmt else "exact", "base": f"o{k}", "expect": same,
                          "jaccard": 1.0 if same else None, "bench": None})
            _write_row(files, msgs, f"e{j}", rng)
        elif kind == "n":
            k = targets[n_exact + j]
            base = original(k)
            op, f = rng.choice(NEAR_OPS), rng.choice(NEAR_FRACTIONS)
            msgs = [{"role": m["role"], "content": edit_words(m["content"], op, f, rng, vocab)} for m in base]
            jac = jaccard(fast_shingles(py_conversation(base)), fast_shingles(py_conversation(msgs)))
            truth.append({"tag": f"n{j}", "kind": "near", "base": f"o{k}", "expect": jac >= THRESHOLD, "jaccard": jac,
                          "bench": None})
            _write_row(files, msgs, f"n{j}", rng)
        elif kind == "c":
            name, item, m = bench[con_items[j]]
            user = next(x["content"] for x in m if x["role"] == "user")
            answer = next(x["content"] for x in m if x["role"] == "assistant")
            if j % 2:
                user = PREAMBLES[j % len(PREAMBLES)] + user
            truth.append({"tag": f"c{j}", "kind": "contam", "base": f"{name}:{item}", "expect": True, "jaccard": None,
                          "bench": name})
            _write_row(files, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], f"c{j}", rng)
        else:
            files.line(rng.choice(["alpaca", "sharegpt"]), MALFORMED[j % len(MALFORMED)])
    files.close()
    pl.DataFrame(truth, schema={"tag": pl.String, "kind": pl.String, "base": pl.String, "expect": pl.Boolean,
                                "jaccard": pl.Float64, "bench": pl.String}).write_parquet(out.parent / "truth.parquet")
    size = sum(Path(f["path"]).stat().st_size for f in files.files)
    planted = {"originals": n_orig, "variants": max(0, n_orig - len(bases)), "exact": n_exact, "near": n_near,
               "near_expected": sum(t["expect"] for t in truth if t["kind"] == "near"),
               "exact_expected": sum(t["expect"] for t in truth if t["kind"].startswith("exact")),
               "contam": n_con, "contam_gsm8k": sum(t["bench"] == "gsm8k_test" for t in truth),
               "malformed": n_mal}
    return {"rows": n, "bases": len(bases), "planted": planted, "files": files.files, "bytes": size,
            "load_s": t_load, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- the run


def write_config(real: Path, work: Path, n: int, files: list[dict[str, Any]], embed: bool, budget: int,
                 shard_rows: int) -> Path:
    import yaml

    stages: list[dict[str, Any]] = [
        {"stage": "length", "min_response_tokens": 2, "max_total_tokens": 4096},
        {"stage": "heuristics"},
        {"stage": "exact_dedup", "key": "conversation"},
        {"stage": "minhash_dedup", "threshold": THRESHOLD},
        {"stage": "decontaminate", "benchmarks": [str(real / f) for f in BENCHMARKS.values()]},
    ]
    if embed:
        stages += [{"stage": "semantic_dedup", "view": "instruction", "eps": 0.05},
                   {"stage": "cluster", "summary_columns": ["len_response_tokens"]}]
    stages.append({"stage": "long_is_more", "budget": budget})
    cfg = {"run": {"name": f"scale-{n}", "out": str(work / f"n{n}" / "runs"), "shard_rows": shard_rows, "seed": 0,
                   "report": False},
           "sources": [{"path": f["path"]} for f in files],
           "stages": stages,
           "flow": {"task_runner": "threads", "work_dir": str(work / f"n{n}" / "store")}}
    path = work / f"n{n}" / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class _Sampler(threading.Thread):
    """VmRSS of this process every ``every`` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), vm_kb("VmRSS")))
            self.stop.wait(self.every)


class _FlowLog(logging.Handler):
    """The flow run's own log lines (segment done, global done, counts) with their times."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage()))


_SEG = re.compile(r"^(?P<label>\S+): \d+ shard\(s\), \d+ cached, (?P<s>[\d.]+)s$")
_GLOB = re.compile(r"^(?P<label>\S+\.global): (?:done|cached) in [\d.]+s$")


def phases(lines: list[tuple[float, str]], t_call: float, t_ret: float) -> list[dict[str, Any]]:
    """Phase windows from the flow's log lines: startup, ingest, each segment, each global step,
    finalize (shards, selected, rejects, state), then manifest + Prefect artifact."""
    out: list[dict[str, Any]] = []
    cur, name = t_call, "flow start (Prefect)"
    for t, msg in lines:
        m_seg, m_glob = _SEG.match(msg), _GLOB.match(msg)
        if msg.startswith("run ") and "work store" in msg and not out:
            out.append({"phase": name, "t0": cur, "t1": t})
            cur, name = t, "ingest"
        elif m_seg:
            start = t - float(m_seg["s"])
            if name == "ingest":
                out.append({"phase": "ingest", "t0": cur, "t1": start})
                cur = start
            out.append({"phase": f"shards: {m_seg['label']}", "t0": cur, "t1": t})
            cur, name = t, "?"
        elif m_glob:
            out.append({"phase": f"global: {m_glob['label'].removesuffix('.global')}", "t0": cur, "t1": t})
            cur, name = t, "?"
        elif msg.startswith("read ") and " = kept " in msg:
            out.append({"phase": "finalize", "t0": cur, "t1": t})
            cur, name = t, "manifest + artifact"
    out.append({"phase": name, "t0": cur, "t1": t_ret})
    return out


def child_run(cfg_path: str, run_id: str, report: bool) -> dict[str, Any]:
    from flows.curate import run_flow  # imported (with Prefect) before the clock starts

    handler = _FlowLog()
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    sampler = _Sampler()
    sampler.start()
    rss0 = vm_kb("VmRSS") / 1024
    t_call = time.time()
    t0 = time.perf_counter()
    res = run_flow(cfg_path, run_id=run_id)
    wall = time.perf_counter() - t0
    t_ret = time.time()
    rss_flow = vm_kb("VmHWM") / 1024
    report_s = None
    if report:
        from pipeline.inspect import write_report

        t1 = time.perf_counter()
        write_report(res["run_dir"])
        report_s = time.perf_counter() - t1
    t_end = time.time()
    sampler.stop.set()
    sampler.join()
    samples = sampler.samples
    series = [(round(t - t_call, 1), round(kb / 1024)) for t, kb in samples[::5]]
    ph = phases(handler.lines, t_call, t_ret)
    if report:
        ph.append({"phase": "report (write_report)", "t0": t_ret, "t1": t_end})
    for p in ph:  # a phase's peak: the samples inside it and the one just after
        inside = [kb for t, kb in samples if p["t0"] <= t <= p["t1"] + sampler.every]
        p["seconds"] = p["t1"] - p["t0"]
        p["peak_rss_mb"] = max(inside) / 1024 if inside else None
    return {"run_dir": res["run_dir"], "wall_s": wall, "report_s": report_s, "rss_start_mb": rss0,
            "peak_rss_flow_mb": rss_flow, "peak_rss_mb": peak_rss_mb(), "children_rss_mb": children_rss_mb(),
            "phases": ph, "log_lines": len(handler.lines), "rss_series": series,
            "flow_log": [(round(t - t_call, 1), m) for t, m in handler.lines]}


# ---------------------------------------------------------------- found vs planted


def child_score(run_dir: str, truth_path: str) -> dict[str, Any]:
    """Found vs planted from the final shards. A planted copy is found when it and its original end in
    one duplicate group: follow ``dup_of`` (a keeper's id) through later dedup stages to a row that
    survived dedup, from both sides, and compare (ids are content hashes: exact copies share one)."""
    import polars as pl

    dedup = ["exact", "minhash", "semantic"]
    before = ["length", "heuristics"]
    rows = (pl.scan_parquet(str(Path(run_dir) / "shards" / "*.parquet"))
            .select(pl.col("synth").cast(pl.String).alias("tag"), "id", "keep", "drop_reason", "dup_of")
            .with_columns(pl.col("drop_reason").str.split(":").list.first().alias("stage"))
            .collect())
    is_dup = pl.col("stage").is_in(dedup).fill_null(False)
    alive = set(rows.filter(~is_dup)["id"].to_list())  # ids with a row that no dedup stage dropped
    ptr = {i: d for i, d in rows.filter(is_dup).select("id", "dup_of").iter_rows() if i not in alive and d and d != i}

    def root(i: str | None) -> str | None:
        for _ in range(64):
            if i not in ptr:
                break
            i = ptr[i]
        return i

    by_tag = rows.filter(pl.col("tag").is_not_null()).select(
        "tag", pl.col("id").map_elements(root, return_dtype=pl.String).alias("root"), "stage", "drop_reason")
    truth = pl.read_parquet(truth_path)
    pairs = (truth.join(by_tag.rename({c: f"c_{c}" for c in by_tag.columns if c != "tag"}), on="tag", how="left")
             .join(by_tag.rename({"tag": "base", **{c: f"b_{c}" for c in by_tag.columns if c != "tag"}}), on="base",
                   how="left"))
    out: dict[str, Any] = {}
    rank = {s: i for i, s in enumerate(dedup)}
    d = pairs.filter(pl.col("kind") != "contam").with_columns(  # the first dedup stage that dropped one of the two
        found_by=pl.min_horizontal(pl.col("c_stage").replace_strict(rank, default=None, return_dtype=pl.Int64),
                                   pl.col("b_stage").replace_strict(rank, default=None, return_dtype=pl.Int64))
        .replace_strict(dict(enumerate(dedup)), default=None, return_dtype=pl.String))
    d = d.with_columns(found=((pl.col("c_root") == pl.col("b_root")) & pl.col("found_by").is_in(dedup)).fill_null(False),
                       lost=(pl.col("c_stage").is_in(before) | pl.col("b_stage").is_in(before)).fill_null(False))
    for kind in ("exact", "exact-format", "near"):
        k = d.filter(pl.col("kind") == kind)
        e = k.filter(pl.col("expect"))
        out[kind] = {"planted": k.height, "expected": e.height, "found": int(k["found"].sum()),
                     "found_expected": int(e["found"].sum()),
                     "found_unexpected": int(k.filter(~pl.col("expect"))["found"].sum()),
                     "lost_before_dedup": int(k.filter(~pl.col("found") & pl.col("lost")).height),
                     "missed_expected": int(e.filter(~pl.col("found") & ~pl.col("lost")).height),
                     "by_stage": dict(k.filter(pl.col("found")).group_by("found_by").len().iter_rows())}
    c = pairs.filter(pl.col("kind") == "contam")
    hit = c.filter((pl.col("c_stage") == "decontam") & pl.col("c_drop_reason").str.contains(pl.col("bench")))
    out["contam"] = {"planted": c.height, "found": hit.height,
                     "lost_before_decontam": c.filter(pl.col("c_stage").is_in([*before, "exact", "minhash"])).height,
                     "missed": c.filter(pl.col("c_stage").is_null() | ~pl.col("c_stage").is_in(
                         [*before, "exact", "minhash", "decontam"])).height}
    dropped = dict(rows.filter(~pl.col("keep")).group_by("stage").len().iter_rows())
    f = d.filter(pl.col("found"))
    explained = pl.concat([f.select(pl.col("c_stage").alias("s")), f.select(pl.col("b_stage").alias("s"))])
    explained_by = dict(explained.filter(pl.col("s").is_in(dedup)).group_by("s").len().iter_rows())
    out["unplanted_drops"] = {s: dropped.get(s, 0) - explained_by.get(s, 0) for s in [*dedup, "decontam"] if s in dropped}
    out["unplanted_drops"]["decontam"] = dropped.get("decontam", 0) - hit.height
    out["dropped_by_stage"] = dropped
    return out


# ---------------------------------------------------------------- driver


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    res_path = log.with_suffix(".json")
    res_path.unlink(missing_ok=True)
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args, "--result", str(res_path)],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    if p.returncode != 0 or not res_path.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {p.returncode}); log {log}:\n{tail}")
    return json.loads(res_path.read_text())


def start_server(home: Path) -> Any:
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    return server


def run_size(n: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    work = Path(args.work)
    d = work / f"n{n}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    embed = n <= args.embed_max_rows
    load0 = load_avg()
    print(f"\n== {n:,} rows (load average {load0}); logs in {d}", flush=True)
    syn = _spawn(["--child", "synth", "--size", str(n)], d / "synth.log", env)
    print(f"   pool: {len(syn['files'])} files, {syn['bytes'] / 1e6:,.0f} MB, built in {syn['seconds']:.0f}s "
          f"(peak RSS {syn['peak_rss_mb']:,.0f} MB)", flush=True)
    cfg = write_config(Path(args.real), work, n, syn["files"], embed, args.budget, args.shard_rows)
    run = _spawn(["--child", "run", "--config", str(cfg), "--run-id", f"scale-{n}"]
                 + ([] if args.no_report else ["--report"]), d / "run.log", env)
    manifest = json.loads((Path(run["run_dir"]) / "manifest.json").read_text())
    print(f"   flow: {run['wall_s']:.0f}s wall, peak RSS {run['peak_rss_mb']:,.0f} MB", flush=True)
    score = _spawn(["--child", "score", "--run-dir", run["run_dir"], "--truth", str(d / "truth.parquet")],
                   d / "score.log", env)
    res = {"rows": n, "embed": embed, "synth": syn, "run": run, "manifest": manifest, "score": score,
           "load_before": load0, "load_after": load_avg()}
    if not args.keep:
        shutil.rmtree(d / "pool", ignore_errors=True)
        shutil.rmtree(d / "store", ignore_errors=True)
    return res


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.1f}x" if a and b is not None else "-"


def _f(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def print_tables(results: list[dict[str, Any]]) -> None:
    sizes = [r["rows"] for r in results]
    head = " | ".join(f"{s:,}" for s in sizes)
    many = len(results) > 1

    print("\n### Per stage (seconds from manifest.json, summed over shard steps; rows/s = pool rows / seconds)\n")
    print(f"| stage | scope | seconds {head} | rows/s {head} | dropped {head}" + (" | seconds ratio" if many else "") + " |")
    print("|---|---|" + "---:|" * (3 * len(sizes) + many))
    names: list[tuple[str, str]] = []
    for r in results:
        for s in r["manifest"]["stages"]:
            if (s["name"], s["scope"]) not in names:
                names.append((s["name"], s["scope"]))
    for name, scope in names:
        secs, drops = [], []
        for r in results:
            st = next((s for s in r["manifest"]["stages"] if s["name"] == name), None)
            secs.append(st["seconds"] if st else None)
            drops.append(st["dropped"] if st else None)
        rps = [(r["manifest"]["counts"]["read"] / s) if s and s >= 0.05 else None
               for r, s in zip(results, secs, strict=True)]
        line = (f"| {name} | {scope} | " + " | ".join(_f(s, ".1f") for s in secs) + " | "
                + " | ".join(_f(x, ",.0f") for x in rps) + " | " + " | ".join(_f(x, ",d") for x in drops))
        print(line + (f" | {_ratio(secs[0], secs[-1])}" if many else "") + " |")
    for key, label in (("ingest_s", "ingest (all sources)"), ("finalize_s", "finalize"), ("compute_s", "sum of stage seconds"),
                       ("total_s", "run total (manifest)")):
        v = [r["manifest"]["timings"].get(key) for r in results]
        rps = [(r["manifest"]["counts"]["read"] / x) if x else None for r, x in zip(results, v, strict=True)]
        print(f"| {label} | | " + " | ".join(_f(x, ".1f") for x in v) + " | " + " | ".join(_f(x, ",.0f") for x in rps)
              + " | " + " | ".join("" for _ in v) + (f" | {_ratio(v[0], v[-1])}" if many else "") + " |")

    print("\n### Per phase (wall seconds and peak RSS of the run process)\n")
    print(f"| phase | wall s {head} | peak RSS MB {head}" + (" | wall ratio | RSS ratio" if many else "") + " |")
    print("|---|" + "---:|" * (2 * len(sizes) + 2 * many))
    order: list[str] = []
    for r in results:
        for p in r["run"]["phases"]:
            if p["phase"] not in order:
                order.append(p["phase"])
    for ph in order:
        w, m = [], []
        for r in results:
            p = next((x for x in r["run"]["phases"] if x["phase"] == ph), None)
            w.append(p["seconds"] if p else None)
            m.append(p["peak_rss_mb"] if p else None)
        print(f"| {ph} | " + " | ".join(_f(x, ".1f") for x in w) + " | " + " | ".join(_f(x, ",.0f") for x in m)
              + (f" | {_ratio(w[0], w[-1])} | {_ratio(m[0], m[-1])}" if many else "") + " |")
    w = [r["run"]["wall_s"] + (r["run"]["report_s"] or 0) for r in results]
    m = [r["run"]["peak_rss_mb"] for r in results]
    print("| **run total (flow call + report)** | " + " | ".join(f"**{x:.1f}**" for x in w) + " | "
          + " | ".join(f"**{x:,.0f}**" for x in m) + (f" | {_ratio(w[0], w[-1])} | {_ratio(m[0], m[-1])}" if many else "")
          + " |")
    ch = [r["run"]["children_rss_mb"] for r in results]
    print("| children of the run process (ru_maxrss; a forked helper reads as large as its parent) | "
          + " | ".join("" for _ in w) + " | " + " | ".join(f"{x:,.0f}" for x in ch) + (" | | " if many else "") + " |")
    rps = [r["manifest"]["counts"]["read"] / x for r, x in zip(results, w, strict=True)]
    print("| rows/s end to end | " + " | ".join(f"{x:,.0f}" for x in rps) + " | " + " | ".join("" for _ in m)
          + (" | | " if many else "") + " |")

    print("\n### Accounting and found vs planted\n")
    for r in results:
        c, s, pl_ = r["manifest"]["counts"], r["score"], r["synth"]["planted"]
        print(f"- **{r['rows']:,} rows** ({'with' if r['embed'] else 'without'} embedding stages; pool "
              f"{len(r['synth']['files'])} files, {r['synth']['bytes'] / 1e6:,.0f} MB, built in {r['synth']['seconds']:.0f}s; "
              f"load average {r['load_before']} before, {r['load_after']} after): read {c['read']:,} = kept {c['kept']:,} "
              f"+ dropped {c['dropped']:,} + rejected {c['rejected']:,} ({'balanced' if c['balanced'] else 'UNBALANCED'}); "
              f"selected {c['selected']:,}; rejected {c['rejected']:,} of {pl_['malformed']:,} planted malformed.")
        for kind, label in (("exact", "exact copies (verbatim)"), ("exact-format", "exact copies (formatting edits)"),
                            ("near", f"near copies (J >= {THRESHOLD} expected)")):
            k = s[kind]
            by = ", ".join(f"{a} {b:,}" for a, b in sorted(k["by_stage"].items()))
            print(f"  - {label}: planted {k['planted']:,}, expected {k['expected']:,}, found {k['found']:,} ({by}); "
                  f"of the expected {k['found_expected']:,} found, {k['missed_expected']:,} missed; "
                  f"{k['found_unexpected']:,} found below the threshold; {k['lost_before_dedup']:,} pair(s) lost to "
                  f"length/heuristics first")
        k = s["contam"]
        print(f"  - benchmark copies: planted {k['planted']:,} ({pl_['contam_gsm8k']:,} GSM8K test, "
              f"{k['planted'] - pl_['contam_gsm8k']:,} HumanEval), found {k['found']:,} by decontaminate, "
              f"{k['lost_before_decontam']:,} dropped by an earlier stage, {k['missed']:,} missed")
        print("  - drops not explained by a planted row (real duplicates/contamination left in the bases, or false "
              "positives): " + ", ".join(f"{k} {v:,}" for k, v in s["unplanted_drops"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "real"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "scale-bench"))
    ap.add_argument("--file-rows", type=int, default=50_000, help="records per input file")
    ap.add_argument("--shard-rows", type=int, default=50_000, help="run.shard_rows")
    ap.add_argument("--embed-max-rows", type=int, default=20_000,
                    help="SemDeDup + clustering (MiniLM on CPU) only at sizes up to this")
    ap.add_argument("--budget", type=int, default=10_000, help="Long-is-More budget (rows)")
    ap.add_argument("--no-report", action="store_true", help="skip timing write_report after the flow")
    ap.add_argument("--keep", action="store_true", help="keep each size's pool and work store (runs/ is kept)")
    ap.add_argument("--json", help="also write every figure here")
    ap.add_argument("--tables-from", help="print the tables of an earlier --json file and exit")
    ap.add_argument("--child", choices=["synth", "run", "score"], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        if args.child == "synth":
            res = synth_pool(Path(args.real), Path(args.work), args.size, args.file_rows)
        elif args.child == "run":
            res = child_run(args.config, args.run_id, args.report)
        else:
            res = child_score(args.run_dir, args.truth)
        Path(args.result).write_text(json.dumps(res, default=str))
        return

    if args.tables_from:
        print_tables(json.loads(Path(args.tables_from).read_text()))
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    need = 8_000 * max(sizes)  # pool + work store + final shards, ~8 KB per row measured with room to spare
    free = shutil.disk_usage(work).free
    print(f"work dir {work}: {free / 1e9:,.1f} GB free, ~{need / 1e9:,.1f} GB needed for the largest size; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load average {load_avg()}")
    if free < need:
        raise SystemExit(f"not enough space in {work}: {free / 1e9:.1f} GB free, need ~{need / 1e9:.1f} GB (--work)")
    home = Path(tempfile.mkdtemp(prefix="scale-bench-prefect-"))
    t0 = time.perf_counter()
    server = start_server(home)
    print(f"prefect API server up in {time.perf_counter() - t0:.1f}s at {server.api_url} (PREFECT_HOME {home})")
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    results = []
    try:
        for n in sizes:
            results.append(run_size(n, args, env))
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
