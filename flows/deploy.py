"""Deployments of the curation flow on a schedule (nightly by default).

Ephemeral Prefect (no server) runs flows but never fires schedules: a schedule needs a Prefect
server and something that polls it for due runs. Two ways, both from one config:

* ``serve`` (simplest): this process registers the deployment with its schedule and executes its
  runs itself (each run in a subprocess)::

      prefect server start --host 127.0.0.1 --port 4200        # SQLite under $PREFECT_HOME
      PREFECT_API_URL=http://127.0.0.1:4200/api \\
          python -m flows.deploy serve configs/nightly.yaml [--input-dir DIR]

  ``python -m flows.deploy up configs/nightly.yaml [--port 4200] [--input-dir DIR]`` (what
  ``make serve`` runs) does both, and stops the server it started on Ctrl-C or SIGTERM.
* ``register`` + a worker: the deployment is stored on the server for a ``process`` work pool and a
  worker (``prefect worker start --pool NAME``) executes the runs::

      python -m flows.deploy register configs/nightly.yaml --work-pool curate

The schedule comes from ``flow.schedule`` in the config (``cron: "0 2 * * *"`` or ``interval_s``;
``timezone``; ``deployment`` names it) unless given on the command line. Runs are parameterized by
the config path and the input location (``input_dir``), and publish the manifest as a markdown
artifact (``curate-<run name>``) with per-stage counts; logs go to the Prefect UI/API.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.config import ScheduleSettings, load_config

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/curate.py:curate_flow"


def schedule_from(settings: ScheduleSettings) -> Any:
    """A Prefect schedule object (Cron or Interval) for ``flow.schedule``."""
    from prefect.schedules import Cron, Interval

    if settings.cron:
        return Cron(settings.cron, timezone=settings.timezone)
    anchor = settings.anchor or datetime.now(timezone.utc)
    return Interval(timedelta(seconds=settings.interval_s or 86400), anchor_date=anchor, timezone=settings.timezone)


def resolve_schedule(config_path: str, cron: str | None = None, interval_s: float | None = None,
                     anchor: datetime | None = None, name: str | None = None) -> ScheduleSettings:
    """The config's ``flow.schedule`` with command-line overrides (default: nightly at 02:00 UTC)."""
    cfg = load_config(config_path)
    base = cfg.flow.schedule or ScheduleSettings(cron="0 2 * * *")
    upd: dict[str, Any] = {}
    if cron or interval_s:
        upd.update(cron=cron, interval_s=interval_s, anchor=anchor)
    elif anchor:
        upd["anchor"] = anchor
    if name:
        upd["deployment"] = name
    return ScheduleSettings.model_validate({**base.model_dump(), **upd})


def parameters(config_path: str, input_dir: str | None, out: str | None) -> dict[str, Any]:
    p: dict[str, Any] = {"config_path": str(Path(config_path).resolve())}
    if input_dir:
        p["input_dir"] = str(Path(input_dir).resolve())
    if out:
        p["out"] = str(Path(out).resolve())
    return p


def build_deployment(config_path: str, input_dir: str | None = None, out: str | None = None,
                     schedule: ScheduleSettings | None = None, first_run_in: float | None = None) -> Any:
    """A ``RunnerDeployment`` of :func:`flows.curate.curate_flow` for :func:`prefect.serve`.

    ``first_run_in`` anchors an interval schedule that many seconds after now (registration time).
    """
    from flows.curate import curate_flow

    sch = schedule or resolve_schedule(config_path)
    if first_run_in is not None:
        if sch.interval_s is None:
            raise ValueError("first_run_in is for interval schedules; a cron schedule fixes its own times")
        sch = sch.model_copy(update={"anchor": datetime.now(timezone.utc) + timedelta(seconds=first_run_in)})
    return curate_flow.to_deployment(
        name=sch.deployment,
        schedules=[schedule_from(sch)],
        parameters=parameters(config_path, input_dir, out),
        tags=["sft-curate"],
        description=f"curate {Path(config_path).name} on schedule {sch.cron or f'every {sch.interval_s}s'}",
    )


def serve(config_path: str, input_dir: str | None = None, out: str | None = None,
          schedule: ScheduleSettings | None = None, limit: int | None = 1, first_run_in: float | None = None) -> None:
    """Register the deployment and execute its scheduled runs until interrupted (needs a server).

    ``limit=1``: one night at a time; a run still going when the next is due makes that one wait.
    """
    from prefect import serve as prefect_serve

    prefect_serve(build_deployment(config_path, input_dir, out, schedule, first_run_in), limit=limit)


def register(config_path: str, work_pool: str, input_dir: str | None = None, out: str | None = None,
             schedule: ScheduleSettings | None = None) -> str:
    """Store the deployment on the server for a ``process`` work pool (created if missing); its id."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    sch = schedule or resolve_schedule(config_path)
    remote = flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    dep_id = remote.deploy(
        name=sch.deployment,
        work_pool_name=work_pool,
        schedules=[schedule_from(sch)],
        parameters=parameters(config_path, input_dir, out),
        tags=["sft-curate"],
        build=False,
        push=False,
        print_next_steps=False,
    )
    return str(dep_id)


def _healthy(api: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def up(config_path: str, host: str = "127.0.0.1", port: int = 4200, input_dir: str | None = None,
       out: str | None = None, schedule: ScheduleSettings | None = None, home: str | None = None,
       startup_timeout_s: float = 120, first_run_in: float | None = None) -> None:
    """``make serve``: a Prefect server on ``host:port`` (SQLite under ``PREFECT_HOME``, default
    ``.prefect/`` in the repo) unless one already answers there, then :func:`serve` until SIGINT or
    SIGTERM; the server this started is stopped on the way out."""
    import os
    import signal
    import subprocess
    import time

    home = home or os.environ.get("PREFECT_HOME") or str(REPO / ".prefect")
    Path(home).mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{home}/prefect.db")
    api = f"http://{host}:{port}/api"
    server = None
    if not _healthy(api):
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                   "--port", str(port)], env=env, start_new_session=True)
        Path(home, "server.pid").write_text(str(server.pid))
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(api):
            if server.poll() is not None or time.monotonic() > deadline:
                _stop(server)
                raise RuntimeError(f"prefect server did not start on {host}:{port} (see its output above)")
            time.sleep(0.5)
        print(f"prefect server on {api} (UI: http://{host}:{port}), PREFECT_HOME={home}", flush=True)
    os.environ["PREFECT_API_URL"] = api

    def _term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        serve(config_path, input_dir, out, schedule, first_run_in=first_run_in)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            _stop(server)
            Path(home, "server.pid").unlink(missing_ok=True)


def _stop(proc: Any) -> None:
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "register", "up"):
        p = sub.add_parser(name)
        p.add_argument("config")
        p.add_argument("--input-dir", help="incremental input directory (a run parameter)")
        p.add_argument("--out", help="output root (a run parameter; default: the config's run.out)")
        p.add_argument("--cron", help="override flow.schedule, e.g. '0 2 * * *'")
        p.add_argument("--interval-s", type=float, help="override flow.schedule with a fixed interval")
        p.add_argument("--anchor", type=datetime.fromisoformat, help="first run of an interval schedule (ISO)")
        p.add_argument("--name", help="deployment name (default flow.schedule.deployment)")
        p.add_argument("--first-run-in", type=float, help="interval schedules: first run this many seconds "
                       "after the deployment is registered")
        if name == "register":
            p.add_argument("--work-pool", required=True)
        if name == "up":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=4200)
    args = ap.parse_args(argv)
    sch = resolve_schedule(args.config, args.cron, args.interval_s, args.anchor, args.name)
    if args.cmd == "serve":
        serve(args.config, args.input_dir, args.out, sch, first_run_in=args.first_run_in)
    elif args.cmd == "up":
        up(args.config, args.host, args.port, args.input_dir, args.out, sch, first_run_in=args.first_run_in)
    else:
        print(register(args.config, args.work_pool, args.input_dir, args.out, sch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
