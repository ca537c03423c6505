"""The peer harness: the project end to end against its peers, each at its best, on the same corpora.

Every case is one fresh process (a peer in its own virtualenv, see ``setup_venvs.sh``), timed from
launch to exit: start-up, reading the input, the work and writing the output are all inside. Cases
are alternated (run 1 of every tool, then run 2, ...), and the table gives the min and median wall
seconds, the peak RSS of the whole process tree (sampled every 50 ms, children included: pools,
executors, Prefect's server), recall (planted pairs with one member removed) and false removals
(removed rows outside a planted pair, plus the second member where both of a pair were removed),
against the truth written by ``corpus.py``.

    python benchmarks/peers/run.py minhash --sizes 100000,300000 --runs 3
    python benchmarks/peers/run.py minhash --sizes 10000 --runs 1 --tools curate-local,rensa   # smoke
    python benchmarks/peers/run.py semdedup --sizes 5000 --runs 2     # corpus.py --instructions 5000 first
    python benchmarks/peers/run.py embed --sizes 3000 --runs 2        # corpus.py --instructions 3000 first

MinHash settings shared by every tool: word 5-grams, 10 bands x 12 rows, Jaccard 0.7 where a tool
checks candidates (the project: exact shingle Jaccard; rensa, datasketch: their signature estimate;
datatrove: no check, clusters of LSH collisions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROJECT_PY = sys.executable
MH = {"bands": 10, "rows": 12, "threshold": 0.7}


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS of the process tree (MB) and stdout of ``cmd``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_rss(ps))
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {err.read().decode(errors='replace')[-3000:]}")
    return wall, peak / 2**20, stdout


def project_env() -> dict[str, str]:
    """The project's environment: its own Prefect home (no other work's database), and a longer wait
    for Prefect's ephemeral API server, which needs more than its default 20 s on a loaded machine."""
    home = Path(tempfile.gettempdir()) / "peers-prefect-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}


# ---------------------------------------------------------------- tools: (cmd, removed-rows reader)


MINHASH_STAGE = {"stage": "minhash_dedup", "key": "response", "ngram": 5, "num_perm": 128, **MH}
EXACT_STAGE = {"stage": "exact_dedup", "key": "response", "keeper": "first"}


def curate_cli(engine: str, stage: dict | None = None) -> Any:
    def case(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
        src = data.with_suffix(".project.parquet")
        cfg = tmp / "run.yaml"
        cfg.write_text(json.dumps({
            "run": {"name": "peers", "out": str(tmp / "runs")},
            "sources": [{"path": str(src)}],
            "stages": [stage or MINHASH_STAGE],
            "flow": {"work_dir": str(tmp / "work")},
        }))
        curate = str(Path(PROJECT_PY).with_name("curate"))

        def removed() -> np.ndarray:
            run = next((tmp / "runs").iterdir())
            t = pq.read_table(run / "shards", columns=["source_row", "keep"])
            return t["source_row"].to_numpy()[~t["keep"].to_numpy(zero_copy_only=False)]

        return [curate, "run", str(cfg), "--engine", engine, "--quiet"], removed, project_env()
    return case


def curate_python(script: str = "minhash_project_python.py") -> Any:
    def case(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
        dst = tmp / "removed.parquet"
        return ([PROJECT_PY, str(HERE / script), str(data), str(dst), json.dumps(MH)],
                lambda: pq.read_table(dst)["row"].to_numpy(), project_env())
    return case


VENV = {"datajuicer": "dj"}  # peer script suffix -> its virtualenv under $PEERS


def peer(name: str, what: str = "minhash") -> Any:
    def case(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
        dst = tmp / "removed.parquet"
        py = str(Path(os.environ.get("PEERS", "/tmp/peers")) / VENV.get(name, name) / "bin" / "python")
        return ([py, str(HERE / f"{what}_{name}.py"), str(data), str(dst), json.dumps(MH)],
                lambda: pq.read_table(dst)["row"].to_numpy(), {**os.environ, "PYTHONPATH": ""})
    return case


def static_dir() -> str:
    """The project's default CPU embedding model (distilled from MiniLM on first use)."""
    sys.path.insert(0, str(REPO))
    from pipeline.static_embeddings import ensure_static

    return str(ensure_static())


def sem_project(neighbours: str) -> Any:
    def case(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
        dst = tmp / "removed.parquet"
        cfg = json.dumps({"eps": EPS, "neighbours": neighbours, "model": "minilm-static"})
        return ([PROJECT_PY, str(HERE / "semdedup_project.py"), str(data), str(dst), cfg],
                lambda: pq.read_table(dst)["row"].to_numpy(), project_env())
    return case


def sem_peer(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
    dst = tmp / "removed.parquet"
    py = str(Path(os.environ.get("PEERS", "/tmp/peers")) / "semhash" / "bin" / "python")
    return ([py, str(HERE / "semdedup_semhash.py"), str(data), str(dst), json.dumps({"eps": EPS, "static": static_dir()})],
            lambda: pq.read_table(dst)["row"].to_numpy(), {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})


EPS = 0.05
SEM_TOOLS = {
    "curate-global": ("`semantic_dedup(table)` (Python; default `neighbours: global`)", sem_project("global")),
    "curate-cluster": ("`semantic_dedup(table, neighbours='cluster')` (the paper's within-cluster rule)",
                       sem_project("cluster")),
    "semhash": ("semhash 0.5 (`self_deduplicate`, usearch ANN, the same static model through model2vec)", sem_peer),
}


def sem_truth(data: Path) -> np.ndarray:
    """Brute-force neighbour pairs above 1 - eps over the whole pool (the project's static vectors)."""
    sys.path.insert(0, str(REPO))
    from pipeline.embeddings import encode

    x = encode(pq.read_table(data, columns=["text"])["text"].to_pylist(), model="minilm-static")
    s = x @ x.T
    np.fill_diagonal(s, -1)
    return s > 1.0 - EPS


def sem_score(removed: np.ndarray, near: np.ndarray) -> tuple[float, int, int]:
    """(recall of brute-force pairs: share with a member removed; removals with no kept row above
    the threshold; kept rows with another kept row above the threshold)."""
    gone = np.zeros(len(near), dtype=bool)
    gone[removed] = True
    iu, ju = np.nonzero(np.triu(near, 1))
    recall = float((gone[iu] | gone[ju]).mean()) if len(iu) else 1.0
    kept = ~gone
    unjustified = int((gone & ~(near[:, kept].any(axis=1))).sum())
    kept_pairs = int((kept & near[:, kept].any(axis=1)).sum())
    return recall, unjustified, kept_pairs


PREFECT_PORT = 4297


def prefect_server_env() -> dict[str, str]:
    return {**project_env(), "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api"}


@contextlib.contextmanager
def prefect_server() -> Any:
    """A Prefect API server for the run (as a nightly deployment has one), started before timing."""
    import urllib.request

    env = project_env()
    proc = subprocess.Popen([str(Path(PROJECT_PY).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(PREFECT_PORT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PREFECT_PORT}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def curate_cli_server(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
    cmd, removed, _ = curate_cli("prefect")(data, tmp)
    return cmd, removed, prefect_server_env()


TOOLS = {
    "curate-local": ("`curate run --engine local` (CLI, all cores)", curate_cli("local")),
    "curate-prefect": ("`curate run` (CLI, default Prefect engine; ephemeral API server started by the run)",
                       curate_cli("prefect")),
    "curate-prefect-server": ("`curate run` (CLI, Prefect engine, API server already running)", curate_cli_server),
    "curate-python": ("`minhash_dedup(table)` (Python, in memory)", curate_python()),
    "rensa": ("rensa 0.5 (bulk R-MinHash, RMinHashLSH)", peer("rensa")),
    "datasketch": ("datasketch 2.0 (`MinHash.bulk` on all cores, MinHashLSH)", peer("datasketch")),
    "datatrove": ("datatrove 0.10.1 (4-stage MinHash, all cores)", peer("datatrove")),
    "datajuicer": ("data-juicer 1.6.1 (`dj-process`, document_minhash_deduplicator, all cores)", peer("datajuicer")),
}
EXACT_TOOLS = {
    "curate-local": ("`curate run --engine local` (CLI, `exact_dedup`, key response, keeper first)",
                     curate_cli("local", EXACT_STAGE)),
    "curate-prefect": ("`curate run` (CLI, default Prefect engine, ephemeral API server)", curate_cli("prefect", EXACT_STAGE)),
    "curate-python": ("`exact_dedup(table)` (Python, in memory)", curate_python("exact_project_python.py")),
    "polars": ("Polars 2.2 (normalise, `is_first_distinct`, all cores)", peer("polars", "exact")),
    "datajuicer": ("data-juicer 1.6.1 (`dj-process`, document_deduplicator, all cores)", peer("datajuicer", "exact")),
}


def score(removed: np.ndarray, group: np.ndarray) -> tuple[float, int]:
    gone = np.zeros(len(group), dtype=bool)
    gone[removed] = True
    planted = group >= 0
    per_pair = np.bincount(group[planted & gone], minlength=int(group.max()) + 1)
    recall = float((per_pair >= 1).mean())
    false = int((gone & ~planted).sum() + (per_pair == 2).sum())
    return recall, false


def run_tool(name: str, make: Any, data: Path) -> tuple[float, float, Any]:
    """One timed run of a tool in a fresh temp dir: ``(wall s, peak RSS MB, what it removed)``."""
    tmp = Path(tempfile.mkdtemp(prefix=f"peers-{name}-"))
    try:
        cmd, removed, env = make(data, tmp)
        wall, rss, _ = timed(cmd, env=env)
        return wall, rss, removed()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def semdedup(a: argparse.Namespace, rows: list[dict]) -> None:
    tools = [t for t in (a.tools or "").split(",") if t in SEM_TOOLS] or list(SEM_TOOLS)
    for n in (int(x) for x in a.sizes.split(",")):
        data = Path(a.data) / f"instr_{n}.parquet"
        near = sem_truth(data)
        res: dict[str, list[dict]] = {t: [] for t in tools}
        for r in range(a.runs):
            for t in tools:
                wall, rss, gone = run_tool(t, SEM_TOOLS[t][1], data)
                recall, unjust, kept_pairs = sem_score(gone, near)
                one = {"n": n, "tool": t, "run": r, "wall_s": wall, "rss_mb": rss, "removed": len(gone),
                       "recall": recall, "unjustified": unjust, "kept_near": kept_pairs, "load": os.getloadavg()[0]}
                res[t].append(one)
                rows.append(one)
                print(json.dumps(one), flush=True)
        n_pairs = int(np.triu(near, 1).sum())
        print(f"\n{data.name}: {n:,} real instructions, {n_pairs:,} brute-force pairs above cos {1 - EPS:.2f} "
              f"(the same static vectors); {a.runs} run(s) alternated\n")
        print("| tool | wall s min | wall s median | peak RSS MB (tree) | removed | recall of pairs | "
              "removed without a kept neighbour | kept rows with a kept neighbour | load (1 min) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in tools:
            rs = res[t]
            w = [x["wall_s"] for x in rs]
            print(f"| {SEM_TOOLS[t][0]} | {min(w):.1f} | {statistics.median(w):.1f} | {max(x['rss_mb'] for x in rs):,.0f} "
                  f"| {rs[0]['removed']:,} | {rs[0]['recall']:.3f} | {rs[0]['unjustified']:,} | {rs[0]['kept_near']:,} "
                  f"| {min(x['load'] for x in rs):.1f}-{max(x['load'] for x in rs):.1f} |")


def run_alternated(tools: list[str], runs: int, case: Any, rows: list[dict], base: dict) -> dict[str, list[dict]]:
    """Run every tool ``runs`` times, alternated (run 1 of each, then run 2, ...), each in a fresh temp
    dir. ``case(tool, tmp)`` gives ``(cmd, env, measure)``; ``measure(stdout)`` reads the run's own
    figures (before the temp dir goes) as a dict merged into the row. Rows are printed and appended to
    ``rows``; returns them per tool."""
    res: dict[str, list[dict]] = {t: [] for t in tools}
    for r in range(runs):
        for t in tools:
            tmp = Path(tempfile.mkdtemp(prefix=f"peers-{t}-"))
            try:
                cmd, env, measure = case(t, tmp)
                wall, rss, out = timed(cmd, env=env)
                extra = measure(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            one = {**base, "tool": t, "run": r, "wall_s": wall, "rss_mb": rss, **extra, "load": os.getloadavg()[0]}
            res[t].append(one)
            rows.append(one)
            print(json.dumps(one), flush=True)
    return res


def alternate(cases: dict[str, tuple[str, list[str], dict]], data: Path, n: int, runs: int, rows: list[dict],
              suffix: str = ".npy") -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """Run every case ``runs`` times, alternated, each as ``CMD DATA OUT`` in a fresh temp dir; the
    figures of each run, and each case's output array (``np.load`` of OUT) from its last run."""
    outs: dict[str, np.ndarray] = {}

    def case(t: str, tmp: Path) -> tuple[list[str], dict, Any]:
        _, cmd, env = cases[t]

        def measure(_stdout: str) -> dict:
            outs[t] = np.load(tmp / f"out{suffix}")
            return {}
        return [*cmd[:2], str(data), str(tmp / f"out{suffix}"), *cmd[2:]], env, measure

    return run_alternated(list(cases), runs, case, rows, {"n": n}), outs


def throughput_table(cases: dict[str, tuple[str, list[str], dict]], res: dict[str, list[dict]], n: int,
                     unit: str) -> None:
    print(f"| implementation | wall s min | wall s median | {unit}/s (min wall) | peak RSS MB (tree) | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for t, (label, _, _) in cases.items():
        w = [x["wall_s"] for x in res[t]]
        print(f"| {label} | {min(w):.1f} | {statistics.median(w):.1f} | {n / min(w):,.1f} | "
              f"{max(x['rss_mb'] for x in res[t]):,.0f} | "
              f"{min(x['load'] for x in res[t]):.1f}-{max(x['load'] for x in res[t]):.1f} |")


def embed(a: argparse.Namespace, rows: list[dict]) -> None:
    """Embedding throughput: the project's stage against a bare ``SentenceTransformer.encode`` of the
    same MiniLM on the same texts; vectors compared (max |difference|)."""
    peers = Path(os.environ.get("PEERS", "/tmp/peers"))
    for n in (int(x) for x in a.sizes.split(",")):
        data = Path(a.data) / f"instr_{n}.parquet"
        peer_env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
        cases = {
            "curate-minilm": ("sft-curate `embed_frame(model='minilm')` (instruction view, batch 64)",
                              [PROJECT_PY, str(HERE / "embed_project.py"), "minilm"], project_env()),
            "st": ("bare `SentenceTransformer.encode` of MiniLM (batch 64, length-sorted by encode)",
                   [str(peers / "st" / "bin" / "python"), str(HERE / "embed_st.py")], peer_env),
            "curate-static": ("sft-curate `embed_frame` default on CPU (`minilm-static`, distilled from MiniLM)",
                              [PROJECT_PY, str(HERE / "embed_project.py"), "minilm-static"], project_env()),
            "model2vec": ("model2vec 0.10 `StaticModel.encode` of the same static model",
                          [str(peers / "semhash" / "bin" / "python"), str(HERE / "embed_model2vec.py"), static_dir()],
                          peer_env),
        }
        if a.tools:
            cases = {t: c for t, c in cases.items() if t in a.tools.split(",")}
        res, vec = alternate(cases, data, n, a.runs, rows)
        n = len(next(iter(vec.values())))
        diffs = []
        for ours, peer in (("curate-minilm", "st"), ("curate-static", "model2vec")):
            if ours in vec and peer in vec:
                cos = float(np.median((vec[ours] * vec[peer]).sum(axis=1)))
                diffs.append(f"{ours} vs {peer}: max |difference| {float(np.abs(vec[ours] - vec[peer]).max()):.2e}, "
                             f"median cosine {cos:.4f}")
        print(f"\n{data.name}: {n:,} real instructions; {a.runs} run(s) alternated; {'; '.join(diffs)}\n")
        throughput_table(cases, res, n, "texts")


def lm(a: argparse.Namespace, rows: list[dict]) -> None:
    """LM scoring: the project's ``perplexity`` against a bare, length-sorted transformers loop at batch
    16 over the same SmolLM2-135M GGUF (both float32 on CPU, same torch and transformers); the
    perplexities compared (Spearman correlation, median relative difference)."""
    sys.path.insert(0, str(REPO))
    from pipeline.models import resolve_model

    gguf = str(resolve_model("smollm2").path)
    peers = Path(os.environ.get("PEERS", "/tmp/peers"))
    for n in (int(x) for x in a.sizes.split(",")):
        data = Path(a.data) / f"lm_{n}.parquet"
        cases = {
            "curate": ("sft-curate `perplexity(table)` (defaults: packed length-sorted batches of <= 4,096 tokens, "
                       "LM head at target positions)", [PROJECT_PY, str(HERE / "lm_project.py")], project_env()),
            "hf": ("bare transformers loop (length-sorted, batch 16, full logits, cross_entropy)",
                   [str(peers / "hf" / "bin" / "python"), str(HERE / "lm_hf.py"), gguf, "16"],
                   {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}),
        }
        res, ppl = alternate(cases, data, n, a.runs, rows)
        x, y = ppl["curate"], ppl["hf"]
        rank = np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
        rel = float(np.median(np.abs(x - y) / y))
        tokens = int(pq.read_table(data).num_rows)
        print(f"\n{data.name}: {tokens:,} real instruction/response pairs; {a.runs} run(s) alternated; "
              f"perplexities: Spearman {rank:.4f}, median relative difference {rel:.2e}\n")
        throughput_table(cases, res, n, "rows")


def heuristics(a: argparse.Namespace, rows: list[dict]) -> None:
    """Heuristic filters: the project's ``heuristics`` stage (CLI and Python) against datatrove's Gopher
    filters as a datatrove pipeline, on real files. Not the same rules (see RESULTS.md): throughput and
    what each drops, not agreement."""
    peers = Path(os.environ.get("PEERS", "/tmp/peers"))

    def cli(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
        cmd, _, env = curate_cli("local", {"stage": "heuristics"})(data, tmp)

        def dropped(_stdout: str) -> int:
            m = json.loads(next((tmp / "runs").iterdir()).joinpath("manifest.json").read_text())
            return int(m["counts"]["dropped"])
        return cmd, dropped, env

    def script(py: str, name: str, env: dict, src: str = "") -> Any:
        def case(data: Path, tmp: Path) -> tuple[list[str], Any, dict]:
            out = tmp / "out"
            path = data.with_suffix(".project.parquet") if src == "project" else data
            return ([py, str(HERE / name), str(path), str(out)],
                    lambda stdout: int(json.loads(stdout.strip().splitlines()[-1])["dropped"]), env)
        return case

    cases = {
        "curate-local": ("`curate run --engine local` (CLI, `heuristics` defaults)", cli),
        "curate-python": ("`heuristics(table)` (Python, after `read_table`)",
                          script(PROJECT_PY, "heuristics_project.py", project_env(), "project")),
        "datatrove": ("datatrove 0.10.1 Gopher repetition -> quality (spaCy words, all cores)",
                      script(str(peers / "datatrove" / "bin" / "python"), "heuristics_datatrove.py",
                             {**os.environ, "PYTHONPATH": ""})),
    }
    tools = [t for t in (a.tools or "").split(",") if t in cases] or list(cases)
    for stem in a.sizes.split(","):
        data = Path(a.data) / f"heur_{stem}.parquet"
        n = pq.read_metadata(data).num_rows

        def case(t: str, tmp: Path, data: Path = data) -> tuple[list[str], dict, Any]:
            cmd, dropped, env = cases[t][1](data, tmp)
            return cmd, env, lambda out: {"dropped": dropped(out)}

        res = run_alternated(tools, a.runs, case, rows, {"n": n, "file": stem})
        print(f"\n{stem}: {n:,} real rows; {a.runs} run(s) alternated\n")
        print("| tool | wall s min | wall s median | rows/s (min wall) | peak RSS MB (tree) | dropped | load (1 min) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in tools:
            w = [x["wall_s"] for x in res[t]]
            print(f"| {cases[t][0]} | {min(w):.1f} | {statistics.median(w):.1f} | {n / min(w):,.0f} | "
                  f"{max(x['rss_mb'] for x in res[t]):,.0f} | {res[t][0]['dropped']:,} | "
                  f"{min(x['load'] for x in res[t]):.1f}-{max(x['load'] for x in res[t]):.1f} |")


IO_LABELS = {
    ("ingest", "curate"): "`curate run --engine local` (one `length` stage)",
    ("ingest", "datasets"): "datasets 5.2 `load_dataset` + `map` (all cores) + `to_parquet`",
    ("export", "curate"): "`curate export --format messages`",
    ("export", "datasets"): "datasets 5.2 `from_parquet` + `to_json`",
}


def io_command(what: str, tool: str, src: Path, run_dir: Path, tmp: Path) -> tuple[list[str], dict]:
    """The command (and environment) of one ingest/export case, writing under ``tmp``."""
    if tool == "curate":
        if what == "ingest":  # curate_cli reads DATA.project.parquet: src is heur_STEM.project.parquet
            cmd, _, env = curate_cli("local", {"stage": "length"})(src.parent / src.name.replace(".project", ""), tmp)
            return cmd, env
        return [str(Path(PROJECT_PY).with_name("curate")), "export", str(run_dir), "--format", "messages",
                "--out", str(tmp / "x")], project_env()
    py = str(Path(os.environ.get("PEERS", "/tmp/peers")) / "datasets" / "bin" / "python")
    arg = src if what == "ingest" else run_dir
    return [py, str(HERE / f"{what}_datasets.py"), str(arg), str(tmp / "out")], {**os.environ, "PYTHONPATH": ""}


def io_cases(a: argparse.Namespace, rows: list[dict]) -> None:
    """Ingest and export against Hugging Face ``datasets`` (own venv) on real chat files.

    ingest: ``curate run`` with one ``length`` stage (read, map to canonical rows, ids, rejects, shards,
    score, finalize, report) against ``load_dataset`` + ``map`` + ``to_parquet``. export: ``curate
    export --format messages`` of a run of that file (made before timing) against ``from_parquet`` of
    the same ``selected/`` shards + ``to_json``."""
    for stem in a.sizes.split(","):
        src = Path(a.data) / f"heur_{stem}.project.parquet"
        n = pq.read_metadata(src).num_rows
        base = Path(tempfile.mkdtemp(prefix="peers-io-"))
        try:
            cmd, env = io_command("ingest", "curate", src, base, base)
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            run_dir = next((base / "runs").iterdir())
            for what in ("ingest", "export"):

                def case(t: str, tmp: Path, what: str = what, src: Path = src, run_dir: Path = run_dir
                         ) -> tuple[list[str], dict, Any]:
                    cmd, env = io_command(what, t, src, run_dir, tmp)
                    return cmd, env, lambda _out: {}

                res = run_alternated(["curate", "datasets"], a.runs, case, rows, {"n": n, "file": stem, "what": what})
                print(f"\n{what}, {stem}: {n:,} real rows; {a.runs} run(s) alternated\n")
                throughput_table({t: (IO_LABELS[what, t], [], {}) for t in res}, res, n, "rows")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["minhash", "exact", "semdedup", "embed", "lm", "heuristics", "io"],
                    help="what to compare; for heuristics, --sizes names the files (e.g. sharegpt_17k,t0_templated_50k)")
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--data", default="/tmp/peers-data", help="corpus.py's output directory")
    ap.add_argument("--corpus", default="docs_{n}", help="file stem, e.g. docs_{n}_natural")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", help="comma-separated keys (default: every tool of WHAT)")
    ap.add_argument("--json", help="also write every run's figures here")
    a = ap.parse_args()
    rows: list[dict] = []
    print(f"# {platform.node()} {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
          f"load {os.getloadavg()}", flush=True)
    if a.what in ("semdedup", "embed", "lm", "heuristics", "io"):
        {"semdedup": semdedup, "embed": embed, "lm": lm, "heuristics": heuristics, "io": io_cases}[a.what](a, rows)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return
    table = TOOLS if a.what == "minhash" else EXACT_TOOLS
    tools = a.tools.split(",") if a.tools else list(table)
    if a.what == "exact" and a.corpus == "docs_{n}":
        a.corpus = "exact_{n}"
    for n in (int(x) for x in a.sizes.split(",")):
        data = Path(a.data) / (a.corpus.format(n=n) + ".parquet")
        group = pq.read_table(data, columns=["group"])["group"].to_numpy()
        res: dict[str, list[dict]] = {t: [] for t in tools}
        server = prefect_server() if "curate-prefect-server" in tools else contextlib.nullcontext()
        with server:
            minhash_runs(a, table, tools, data, group, res, rows, n)
        print(f"\n{data.name}: {n:,} rows, {int((group >= 0).sum()) // 2:,} planted pairs; {a.runs} run(s) alternated\n")
        print("| tool | wall s min | wall s median | peak RSS MB (tree) | recall | false removals | load (1 min) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in tools:
            rs = res[t]
            w = [x["wall_s"] for x in rs]
            print(f"| {table[t][0]} | {min(w):.1f} | {statistics.median(w):.1f} | {max(x['rss_mb'] for x in rs):,.0f} | "
                  f"{rs[0]['recall']:.3f} | {rs[0]['false']:,} | {min(x['load'] for x in rs):.1f}-{max(x['load'] for x in rs):.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


def minhash_runs(a: argparse.Namespace, table: dict, tools: list[str], data: Path, group: np.ndarray, res: dict,
                 rows: list, n: int) -> None:
    for r in range(a.runs):
        for t in tools:
            wall, rss, gone = run_tool(t, table[t][1], data)
            recall, false = score(gone, group)
            one = {"n": n, "tool": t, "run": r, "wall_s": wall, "rss_mb": rss, "recall": recall, "false": false,
                   "load": os.getloadavg()[0]}
            res[t].append(one)
            rows.append(one)
            print(json.dumps(one), flush=True)


if __name__ == "__main__":
    main()
