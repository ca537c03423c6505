"""``curate``: run a config, inspect a run, list the input formats.

    curate run configs/demo.yaml [--out DIR] [--run-id ID] [--engine local|prefect] [--quiet]
    curate inspect RUN_DIR
    curate formats
    curate report RUN_DIR
    curate export RUN_DIR --format messages --out PATH
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from pipeline.config import ConfigError, load_config


def _print(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = args.engine
    if engine == "auto":
        try:
            import flows.curate  # noqa: F401

            engine = "prefect"
        except ImportError:
            engine = "local"
    if engine == "prefect":
        from flows.curate import run_flow

        result = run_flow(args.config, out=args.out, run_id=args.run_id, quiet=args.quiet)
        run_dir, manifest = Path(result["run_dir"]), result["manifest"]
    else:
        from pipeline.runner import finish_run, run

        log = lambda m: _print(m, args.quiet)  # noqa: E731
        res = run(cfg, out=args.out, run_id=args.run_id, progress=not args.quiet, log=log)
        run_dir, manifest = res.run_dir, res.manifest
        if manifest["status"] == "complete":
            finish_run(run_dir, cfg, log)
    c = manifest["counts"]
    _print(
        f"read {c['read']:,} = kept {c['kept']:,} + dropped {c['dropped']:,} + rejected {c['rejected']:,}"
        f" ({'balanced' if c['balanced'] else 'UNBALANCED'}); selected {c['selected']:,}",
        args.quiet,
    )
    print(run_dir)
    return 0 if c["balanced"] else 1


def inspect_text(run_dir: Path) -> str:
    """Per-stage counts, drop reasons and score quantiles of a run, as plain-text tables."""
    from pipeline.io.shards import scan_shards

    m = json.loads((run_dir / "manifest.json").read_text())
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
    lf = scan_shards(run_dir / "shards")
    schema = lf.collect_schema()
    numeric = [n for n, t in schema.items() if t.is_numeric() and n not in ("source_row", "select_rank")]
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
    from pipeline.io.formats import FORMAT_HELP
    from pipeline.io.readers import CONTAINERS

    print("containers: " + ", ".join(CONTAINERS) + "  (.jsonl/.json may be .gz; hf_disk = save_to_disk dir; hf_load = load_dataset builder)")
    print("record formats (auto-detected from the first record, or set `format:` on the source):")
    for name, text in FORMAT_HELP.items():
        print(f"  {name:<18} {text}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

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
    print(json.dumps(info, indent=2, default=str))
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
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a config")
    r.add_argument("config")
    r.add_argument("--out", help="output root (default: the config's run.out)")
    r.add_argument("--run-id")
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
    ex.set_defaults(fn=cmd_export)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
