"""``curate``: run a config, inspect a run, list the input formats.

    curate run configs/demo.yaml [--out DIR] [--run-id ID] [--input-dir DIR] [--engine local|prefect] [--quiet]
    curate inspect RUN_DIR
    curate formats
    curate report RUN_DIR
    curate export RUN_DIR --format messages --out PATH [--json]
    curate distill [--source minilm] [--out DIR] [--force]
    curate stages [NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import polars as pl

from pipeline import progress as _progress
from pipeline.config import ConfigError, load_config
from pipeline.engine.manifest import Interrupted

try:  # imported here, not in the signal handler that uses it (see _interrupt)
    import psutil
except ImportError:  # pragma: no cover - a dependency
    psutil = None  # type: ignore[assignment]

#: Defaults for the libraries a run drives, set before any of them is imported (the user's own
#: environment wins). Prefect's server sends an anonymous telemetry heartbeat and logs
#: "ERROR ... Failed to send telemetry" on every run without network; this tool's runs are offline.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "RAY_USAGE_STATS_ENABLED": "0"}


def _print(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.engine import engine_runner, engines

    try:
        load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = args.engine
    if engine == "auto":  # the Prefect engine when it is installed, else in-process
        engine = "prefect" if "prefect" in engines() else "local"
    try:
        runner = engine_runner(engine)
    except (KeyError, ImportError) as e:
        print(f"error: --engine {engine}: {e}", file=sys.stderr)
        return 2
    if getattr(args, "console", False):
        # The modules imported so far (Prefect's alone are ~100k objects) live as long as the process:
        # leave them out of the cyclic collector, whose full passes over them otherwise cost ~0.4 s
        # of a 100k-row Prefect run. Only from the console: a notebook's or test's heap is its own.
        gc.freeze()
    log = lambda m: _print(m, args.quiet)  # noqa: E731
    res = runner(args.config, out=args.out, run_id=args.run_id, input_dir=args.input_dir, quiet=args.quiet, log=log)
    c = res.manifest["counts"]
    _print(
        f"read {c['read']:,} = kept {c['kept']:,} + dropped {c['dropped']:,} + rejected {c['rejected']:,}"
        f" ({'balanced' if c['balanced'] else 'UNBALANCED'}); selected {c['selected']:,}",
        args.quiet,
    )
    for err in res.errors:
        print(f"error: {err}", file=sys.stderr)
    print(res.run_dir)
    return 0 if c["balanced"] and not res.errors else 1


def inspect_text(run_dir: Path) -> str:
    """Per-stage counts, drop reasons and score quantiles of a run, as plain-text tables."""
    from pipeline.engine import verify_run
    from pipeline.io.shards import scan_shards

    m = verify_run(run_dir)
    c = m["counts"]
    lines = [f"run {m['run_id']}  status={m['status']}  config_hash={m['config_hash']}", ""]
    lines.append(f"{'read':>12} {'rejected':>10} {'kept':>10} {'dropped':>10} {'selected':>10}")
    lines.append(f"{c['read']:>12,} {c['rejected']:>10,} {c['kept']:>10,} {c['dropped']:>10,} {c['selected']:>10,}")
    lines += ["", "sources:"]
    for s in m["sources"]:
        lines.append(f"  {s['name']:<40} {s['format'] or '-':<18} read {s['read']:>9,}  rejected {s['rejected']:>7,}")
    lines += ["", f"{'stage':<22} {'dropped':>9} {'seconds':>9}"]
    for s in m["stages"]:
        lines.append(f"{s['name']:<22} {s['dropped']:>9,} {s['seconds']:>9.2f}")
    lines += ["", "drop reasons:"]
    for r, n in list(c["dropped_by_rule"].items())[:30]:
        lines.append(f"  {r:<50} {n:>9,}")
    from pipeline.score_columns import score_columns

    lf = scan_shards(run_dir / "shards")
    schema = lf.collect_schema()
    numeric = score_columns(dict(schema), m)  # real scores only: no hashes, ids, clusters, ranks
    if numeric:
        q = lf.select(
            [pl.col(n).cast(pl.Float64).quantile(p).alias(f"{n}|{p}") for n in numeric for p in (0.05, 0.5, 0.95)]
        ).collect()
        lines += ["", f"{'score':<30} {'p05':>12} {'p50':>12} {'p95':>12}"]
        for n in numeric:
            vals = [q[f"{n}|{p}"][0] for p in (0.05, 0.5, 0.95)]
            lines.append(f"{n:<30} " + " ".join(f"{v:>12.4g}" if v is not None else f"{'-':>12}" for v in vals))
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").exists():
        print(f"error: {run_dir} has no manifest.json (not a run directory)", file=sys.stderr)
        return 2
    print(inspect_text(run_dir))
    return 0


def cmd_formats(_args: argparse.Namespace) -> int:
    from pipeline.io.containers import CONTAINERS, HF_KEYS
    from pipeline.io.formats import FORMAT_HELP, REASONING_MODES, THINK_TAGS

    print("containers (`container:` on a source; auto = from the file name):")
    containers = {
        "jsonl": ".jsonl / .ndjson, optionally .gz",
        "json": ".json (an array, or concatenated values), optionally .gz; streamed",
        "parquet": ".parquet; read by row group, column types kept",
        "csv": ".csv, optionally .gz; header row, column types inferred over the whole file",
        "tsv": ".tsv / .tab, optionally .gz; as csv, tab-separated",
        "hf_disk": "a `datasets` save_to_disk directory (Dataset or DatasetDict)",
        "hf_load": "any `datasets.load_dataset` builder over the local path (needs hf_builder)",
    }
    for name in CONTAINERS[1:]:
        print(f"  {name:<18} {containers.get(name, '')}")
    print("Hugging Face keys of a source:")
    for key, text in HF_KEYS.items():
        print(f"  {key:<18} {text}")
    print("record formats (auto-detected from the first record, or set `format:` on the source):")
    for name, text in FORMAT_HELP.items():
        print(f"  {name:<18} {text}")
    print("tool calls and reasoning (every format):")
    print("  tools              a top-level list of tool definitions (or its JSON text), kept per conversation")
    print(f"  reasoning          source key, one of {', '.join(REASONING_MODES)}: auto takes an assistant turn's "
          "reasoning_content / reasoning field, else a leading think block of its content; fields: only the fields")
    print(f"  think_tags         source key, default {list(THINK_TAGS)}: the tags of a think block")
    print("other fields: every input field a format does not map is a typed column of its own; one whose name the "
          "tool uses (source, id, keep, a stage's score, ...) is renamed user.<name>")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.inspect import write_report

    path = write_report(Path(args.run_dir))
    print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import ExportError, export

    try:
        info = export(Path(args.run_dir), args.format, Path(args.out), where=args.where,
                      with_scores=args.with_scores, push_to_hub=args.push_to_hub)
    except (ExportError, PermissionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(export_summary(info))
    return 0


def export_summary(info: dict[str, object]) -> str:
    """A few lines on what ``export`` wrote (``--json`` prints everything, score statistics included)."""
    skipped = info.get("skipped") or 0
    lines = [f"exported {info.get('exported', 0):,} rows ({info.get('format')}) from {info.get('input')}"
             + (f" where {info['where']}" if info.get("where") else "")
             + f"; considered {info.get('rows_in', 0):,}, skipped {skipped:,}",
             f"data: {info.get('data')}", f"card: {info.get('card')}"]
    if skipped:
        by = info.get("skipped_by_reason") or {}
        lines.append("skipped: " + ", ".join(f"{r} {n:,}" for r, n in list(by.items())[:5])  # type: ignore[union-attr]
                     + f" (list: {info.get('skipped_list')})")
    lines.append(f"columns: {', '.join(info.get('columns') or [])}")  # type: ignore[arg-type]
    if info.get("columns_omitted"):
        lines.append(f"left out: {', '.join(info['columns_omitted'])}")  # type: ignore[arg-type]
    if info.get("pushed_to"):
        lines.append(f"pushed to: {info['pushed_to']}")
    lines.append(f"sha256: {info.get('sha256')}  ({info.get('seconds')} s; --json for everything)")
    return "\n".join(lines)


def cmd_stages(args: argparse.Namespace) -> int:
    """List the stages (config name = Python function in pipeline.stages) or describe one with its params."""
    from pipeline.stages import REGISTRY, available_stages, get_stage
    from pipeline.stages.functions import describe, summary_line

    if args.name:
        if args.name not in REGISTRY:
            import difflib

            close = difflib.get_close_matches(args.name, list(REGISTRY), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            print(f"error: unknown stage {args.name!r}{hint}; `curate stages` lists them", file=sys.stderr)
            return 2
        print(describe(get_stage(args.name), args.name))
        return 0
    names = available_stages()
    width = max(map(len, names)) + 2
    print("stages (the config's `stage:` name is also the function: `from pipeline.stages import NAME`):")
    for name in names:
        cls = get_stage(name)
        kind = "selector" if cls.is_selector else cls.scope
        print(f"  {name:<{width}} {kind:<9} {summary_line(cls)[:90]}")
    print("`curate stages NAME` lists a stage's params with their defaults and meaning.")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from pipeline.models import ModelLoadError, ModelNotFound
    from pipeline.static_embeddings import distill

    try:
        path = distill(args.source, Path(args.out) if args.out else None, force=args.force)
    except (ModelNotFound, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``curate evaluate``: fine-tune on each arm and score the targets (pipeline.evaluate)."""
    from pipeline.evaluate import EvaluationError, evaluate, format_table

    over = {k: getattr(args, k) for k in ("model", "budget", "steps", "epochs", "batch_size", "grad_accum",
                                         "learning_rate", "max_length", "target_items", "accuracy_items",
                                         "max_new_tokens", "device")}
    if args.seeds:
        over["seeds"] = [int(x) for x in args.seeds.split(",") if x.strip()]
    if args.target:
        over["targets"] = args.target
    if args.baselines is not None:
        over["baselines"] = [b for b in args.baselines.split(",") if b.strip()]
    if args.lora:
        over["lora"] = True
    if args.no_base:
        over["base"] = False
    if args.accuracy is not None:
        over["accuracy"] = args.accuracy or None
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        doc = evaluate(args.runs, args.arm or [], out=args.out, log=log, **over)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(doc))
    print(f"\nwrote {doc['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="curate", description="Curate instruction-tuning datasets.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a config")
    r.add_argument("config")
    r.add_argument("--out", help="output root (default: the config's run.out)")
    r.add_argument("--run-id")
    r.add_argument("--input-dir", help="incremental nightly mode: process the new files of this directory")
    r.add_argument("--engine", choices=["auto", "local", "prefect"], default="auto",
                   help="prefect (default when installed) runs the Prefect flow; local runs in-process")
    r.add_argument("--quiet", action="store_true", help="no progress output; print only the run directory")
    r.set_defaults(fn=cmd_run)
    i = sub.add_parser("inspect", help="counts, drop reasons and score quantiles of a run")
    i.add_argument("run_dir")
    i.set_defaults(fn=cmd_inspect)
    f = sub.add_parser("formats", help="what the readers accept")
    f.set_defaults(fn=cmd_formats)
    rp = sub.add_parser("report", help="(re)generate the HTML report of a run")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=cmd_report)
    ex = sub.add_parser("export", help="export the selected subset for training")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["messages", "sharegpt", "alpaca", "hf"], default="messages")
    ex.add_argument("--out", required=True)
    ex.add_argument("--where", help="a Polars SQL filter over the scored shards, e.g. \"ifd < 0.9\"")
    ex.add_argument("--with-scores", action="store_true", help="carry the score columns along")
    ex.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to this Hub dataset repo (needs credentials)")
    ex.add_argument("--json", action="store_true", help="print the full export record (counts, files, score statistics) as JSON")
    ex.set_defaults(fn=cmd_export)
    d = sub.add_parser("distill", help="distil the static embedding model (minilm-static) into the model cache")
    d.add_argument("--source", default="minilm", help="sentence-transformers model to distil (alias or local dir)")
    d.add_argument("--out", help="directory (default: the model cache, $SFT_CURATE_MODEL_CACHE)")
    d.add_argument("--force", action="store_true", help="distil again even when the directory holds a model")
    d.set_defaults(fn=cmd_distill)
    st = sub.add_parser("stages", help="list the stages, or one stage's params with defaults and meaning")
    st.add_argument("name", nargs="?")
    st.set_defaults(fn=cmd_stages)
    ev = sub.add_parser("evaluate", help="fine-tune on each selection and random baselines; score held-out targets")
    ev.add_argument("runs", nargs="+", help="run directories; the first gives the selection and the baselines")
    ev.add_argument("--arm", action="append", help="another arm: a run directory or a data file (NAME=PATH)")
    ev.add_argument("--target", action="append", help="gsm8k, alpaca_eval, humaneval or a file (NAME=PATH); repeatable")
    ev.add_argument("--model", help="base model: alias, local HF directory or .gguf (default smollm2)")
    ev.add_argument("--budget", type=int, help="rows per arm (default: the first run's selection size)")
    ev.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    ev.add_argument("--baselines", help="comma-separated subset of random,longest,uncurated ('' for none)")
    ev.add_argument("--steps", type=int)
    ev.add_argument("--epochs", type=float)
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--grad-accum", type=int)
    ev.add_argument("--learning-rate", "--lr", type=float)
    ev.add_argument("--max-length", type=int)
    ev.add_argument("--lora", action="store_true")
    ev.add_argument("--target-items", type=int, help="first N items of each target")
    ev.add_argument("--accuracy", help="exact-match target (default gsm8k; '' turns it off)")
    ev.add_argument("--accuracy-items", type=int, help="GSM8K questions answered by greedy generation")
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--no-base", action="store_true", help="do not score the untuned base")
    ev.add_argument("--out", help="directory for evaluation.json (default: the first run's)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(fn=cmd_evaluate)
    return ap


def _interrupt(sig: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM: stop the run within seconds (steps on worker threads or Prefect tasks stop
    at their next progress report), the manifest says ``interrupted``, locks are released. A second
    Ctrl-C forces the process out at once."""
    # nothing is imported here: a handler that imports can be re-entered by the next signal half-way
    # through the import (seen with three quick Ctrl-C: "partially initialized module")
    if _progress.cancelled() and sig == signal.SIGINT:
        # a third Ctrl-C must not re-enter the way out
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("error: interrupted twice; stopped at once", file=sys.stderr, flush=True)
        _stop_children(grace_s=0.5)
        os._exit(130)
    # (a SIGTERM while already stopping, e.g. re-sent by an orchestrator that took it over during
    # its flow run, stops the same way as the first)
    _progress.cancel()
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted("terminated (SIGTERM)")


def _stop_children(grace_s: float = 3.0) -> None:
    """Before leaving with ``os._exit`` (which waits for nothing): end the processes this run started
    (task-runner process pools, LM scoring workers), politely first."""
    if psutil is None:  # pragma: no cover - a dependency; without it children end with their pipes
        return
    kids = psutil.Process().children(recursive=True)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        with contextlib.suppress(psutil.Error):
            k.kill()


def _resume_hint(args: argparse.Namespace, err: BaseException) -> str:
    """The command that resumes an interrupted run (its run id, even when the user gave none)."""
    if getattr(args, "fn", None) is not cmd_run:
        return "interrupted"
    run_id = getattr(err, "run_id", None) or args.run_id
    if not run_id:
        return "interrupted before the run started"
    cmd = ["curate", "run", args.config, "--run-id", run_id]
    for flag, value in (("--out", args.out), ("--input-dir", args.input_dir),
                        ("--engine", None if args.engine == "auto" else args.engine)):
        if value:
            cmd += [flag, value]
    return f"interrupted; resume with: {shlex.join(cmd)}"


def main(argv: list[str] | None = None, console: bool = False) -> int:
    """``curate``: a user-facing error is one ``error:`` line (the traceback only with ``--debug``).

    Parameters
    ----------
    argv:
        The arguments (default ``sys.argv[1:]``).
    console:
        Called as the ``curate`` program (:func:`entry`), not from Python: the process ends after
        this call, so its heap may be frozen (see :func:`entry`).
    """
    from pipeline.engine import LockHeld, RunIntegrityError
    from pipeline.engine.driver import RunExists
    from pipeline.io.readers import SourceError
    from pipeline.progress import Cancelled

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    args = build_parser().parse_args(argv)
    args.console = console
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored by our parent
            handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    try:
        return int(args.fn(args))
    except (LockHeld, RunExists, RunIntegrityError, SourceError, FileNotFoundError, PermissionError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted, Cancelled) as e:
        if args.debug:
            raise
        print(f"error: {_resume_hint(args, e)}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        _stop_children()
        # steps still running on worker threads write atomically: leave now instead of waiting for them
        os._exit(130)
    finally:  # main() called from Python (tests, a notebook): the caller's handlers again
        for sig, h in handlers.items():
            if h is not None:
                signal.signal(sig, h)


def entry() -> int:
    """The ``curate`` program. After the command, the objects left are only freed by the interpreter's
    exit, whose collections over Prefect's, pandas' and the run's objects took 0.5-1 s of a run's wall
    time (measured with the 100k-row MinHash run of benchmarks/peers): frozen, they are released
    without being traversed. atexit handlers (Prefect sending its last log lines) still run."""
    rc = main(console=True)
    gc.freeze()
    return rc


if __name__ == "__main__":
    sys.exit(entry())
