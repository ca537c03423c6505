"""Scoring worker process and its pipeline-side client.

vllm's dependency pins clash with Prefect's, so a GPU backend runs in a worker process with its own
interpreter (a separate virtualenv holding vllm, pyarrow and this package on ``PYTHONPATH``)::

    python -m pipeline.scoring.worker --spec '{"backend": "vllm", "model": "/models/llama"}'

The worker loads the backend, then speaks the protocol of :mod:`pipeline.scoring.protocol` over
stdin/stdout: it first writes a JSON frame ``{"ready": true, ...info}`` (or ``{"error": ...}``),
then answers each Arrow frame of requests with an Arrow frame of responses, and each JSON frame
``{"op": "info" | "stats" | "close"}`` with a JSON frame. A failure while scoring is answered
with ``{"error": message}`` and the worker keeps serving. Anything the backend prints goes to
stderr, never into the framed stdout.

File mode reads one Parquet file of requests and writes one of responses, then exits::

    python -m pipeline.scoring.worker --spec SPEC --requests req.parquet --responses resp.parquet

The transformers backend speaks the same protocol (``--spec '{"backend": "transformers"}'``), which
is how the protocol is tested without a GPU. :class:`WorkerClient` is the pipeline side: it spawns
the worker with a configurable interpreter and behaves like an in-process backend.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.scoring.protocol import Backend, BackendSpec, read_frame, write_frame

#: the directory that holds the ``pipeline`` package, put on the worker's PYTHONPATH
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def load_backend(spec: BackendSpec) -> Backend:
    """Load the backend named by ``spec`` in this process (heavy imports happen here)."""
    if spec.backend == "transformers":
        from pipeline.scoring.backend_hf import HFBackend

        return HFBackend(spec)
    if spec.backend == "vllm":
        from pipeline.scoring.backend_vllm import VLLMBackend

        return VLLMBackend(spec)
    raise ValueError(f"unknown backend {spec.backend!r}; allowed: transformers, vllm")


# ---------------------------------------------------------------- worker side


def serve(backend: Backend, rx: BinaryIO, tx: BinaryIO) -> None:
    """Answer frames from ``rx`` on ``tx`` until end of stream or ``{"op": "close"}``."""
    while True:
        msg = read_frame(rx)
        if msg is None:
            return
        if isinstance(msg, pa.Table):
            try:
                write_frame(tx, backend.score(msg))
            except Exception as e:  # noqa: BLE001 - reported to the client, which raises
                write_frame(tx, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
            continue
        op = msg.get("op")
        if op == "info":
            write_frame(tx, backend.info())
        elif op == "stats":
            write_frame(tx, backend.stats())
        elif op == "close":
            write_frame(tx, {"closed": True})
            return
        else:
            write_frame(tx, {"error": f"unknown op {op!r}"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.scoring.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="{}", help="BackendSpec as JSON")
    ap.add_argument("--backend", choices=["transformers", "vllm"], help="overrides spec.backend")
    ap.add_argument("--model", help="overrides spec.model")
    ap.add_argument("--requests", help="file mode: Parquet file of requests")
    ap.add_argument("--responses", help="file mode: where to write the Parquet file of responses")
    args = ap.parse_args(argv)
    spec = BackendSpec.from_json(args.spec)
    if args.backend:
        spec.backend = args.backend
    if args.model:
        spec.model = args.model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the framed channel is the original stdout; everything printed from here on goes to stderr
    tx = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    rx = sys.stdin.buffer
    try:
        backend = load_backend(spec)
    except Exception as e:  # noqa: BLE001 - the client shows this message
        if not args.requests:
            write_frame(tx, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        traceback.print_exc()
        return 1
    if args.requests:
        if not args.responses:
            ap.error("--requests needs --responses")
        resp = backend.score(pq.read_table(args.requests))
        tmp = Path(args.responses).with_name(f".{Path(args.responses).name}.tmp")
        pq.write_table(resp, tmp)
        os.replace(tmp, args.responses)
        return 0
    write_frame(tx, {"ready": True, **backend.info()})
    serve(backend, rx, tx)
    backend.close()
    return 0


# ---------------------------------------------------------------- pipeline side


class WorkerError(RuntimeError):
    """The worker failed to start or to score; the message carries its error and log tail."""


class WorkerClient:
    """A backend living in a worker process started with ``python`` (default: this interpreter)."""

    def __init__(self, spec: BackendSpec, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.python = python or sys.executable
        self._lock = threading.Lock()  # one request/response exchange at a time on the pipe
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), child_env.get("PYTHONPATH", "")) if p)
        child_env.setdefault("HF_HUB_OFFLINE", "1")
        child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see backend_hf: spin-waiting on shared CPUs
        self._log = tempfile.NamedTemporaryFile(prefix="scoring-worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.python, "-m", "pipeline.scoring.worker", "--spec", spec.to_json()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=child_env,
        )
        hello = self._recv()
        if not isinstance(hello, dict) or not hello.get("ready"):
            self.close()
            raise WorkerError(f"scoring worker failed to start: {self._describe(hello)}")
        self._info = {k: v for k, v in hello.items() if k != "ready"}

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _describe(self, msg: Any) -> str:
        if isinstance(msg, dict) and "error" in msg:
            return f"{msg['error']}\n--- worker log ---\n{self._log_tail()}"
        return f"unexpected reply {type(msg).__name__}\n--- worker log ---\n{self._log_tail()}"

    def _send(self, payload: pa.Table | dict[str, Any]) -> None:
        try:
            write_frame(self.proc.stdin, payload)  # type: ignore[arg-type]
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"scoring worker is gone ({e})\n--- worker log ---\n{self._log_tail()}") from e

    def _recv(self) -> pa.Table | dict[str, Any]:
        try:
            msg = read_frame(self.proc.stdout)  # type: ignore[arg-type]
        except EOFError as e:
            msg = None
            err: Exception | None = e
        else:
            err = None
        if msg is None:
            code = self.proc.poll()
            raise WorkerError(f"scoring worker closed its output (exit code {code})\n--- worker log ---\n"
                              f"{self._log_tail()}") from err
        return msg

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def score(self, requests: pa.Table) -> pa.Table:
        with self._lock:
            self._send(requests)
            msg = self._recv()
        if not isinstance(msg, pa.Table):
            raise WorkerError(f"scoring worker failed: {self._describe(msg)}")
        return msg

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._send({"op": "stats"})
            msg = self._recv()
        return msg if isinstance(msg, dict) else {}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "close"})
                self._recv()
            except WorkerError:
                pass
            for s in (self.proc.stdin, self.proc.stdout):
                if s:
                    s.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __del__(self) -> None:  # a forgotten client must not leave a worker holding a GPU
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
