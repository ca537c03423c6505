"""The worker protocol for real: the transformers backend in a worker process (its own interpreter,
here this one) must return what the in-process backend returns, and failures must surface."""

from __future__ import annotations

import io
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.scoring.protocol import (
    BackendSpec,
    make_requests,
    normalize_requests,
    read_frame,
    write_frame,
)
from pipeline.scoring.worker import WorkerClient, WorkerError


def test_frames_round_trip_tables_and_json():
    req = make_requests(["ctx a", "ctx b"], ["tgt", ""], entropy=[True, False], rating=["1", "2"],
                        max_target=[3, None], max_tokens=64)
    buf = io.BytesIO()
    write_frame(buf, req)
    write_frame(buf, {"op": "info"})
    buf.seek(0)
    assert read_frame(buf).equals(req)
    assert read_frame(buf) == {"op": "info"}
    assert read_frame(buf) is None


def test_truncated_stream_is_an_error_not_a_silent_end():
    buf = io.BytesIO()
    write_frame(buf, make_requests(["a"], ["b"]))
    cut = io.BytesIO(buf.getvalue()[:-5])
    with pytest.raises(EOFError):
        read_frame(cut)


def test_old_clients_requests_are_normalised():
    t = pa.table({"req_id": [1], "context": ["c"], "target": ["t"]})
    n = normalize_requests(t)
    assert n.column_names == ["req_id", "context", "target", "entropy", "rating", "max_target", "max_tokens"]
    assert n["entropy"].to_pylist() == [False] and n["max_tokens"].to_pylist() == [None]


@pytest.fixture(scope="module")
def worker(smol):
    w = WorkerClient(BackendSpec(), python=sys.executable)
    yield w
    w.close()
    assert w.proc.returncode == 0


@pytest.fixture(scope="module")
def requests_(renderer, pool, max_tokens):
    pairs = [p for msgs in pool["messages"].to_list() for p in renderer.turn_pairs(msgs)]
    return make_requests([c for _, c, _ in pairs], [y for _, _, y in pairs], entropy=True,
                         rating=["Yes", "No"], max_tokens=max_tokens)


def test_worker_scores_like_the_in_process_backend(smol, worker, requests_):
    assert worker.info()["model_id"] == smol.info()["model_id"]
    assert worker.info()["chat_template"] == smol.info()["chat_template"]
    remote, local = worker.score(requests_), smol.score(requests_)
    assert remote.schema == local.schema and remote.num_rows == local.num_rows
    assert remote["req_id"].to_pylist() == local["req_id"].to_pylist()
    for col in ("n_context", "n_target", "n_target_in", "truncated", "error", "rating_ids"):
        assert remote[col].to_pylist() == local[col].to_pylist(), col
    for col in ("token_logprobs", "token_entropy", "rating_logprobs"):
        for a, b in zip(remote[col].to_pylist(), local[col].to_pylist(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert worker.stats()["requests"] == requests_.num_rows


def test_worker_reports_a_bad_request_and_keeps_serving(worker, requests_):
    with pytest.raises(WorkerError, match="lacks required column 'context'"):
        worker.score(pa.table({"req_id": [0], "target": ["x"]}))
    assert worker.score(requests_.slice(0, 1)).num_rows == 1


def test_worker_that_cannot_load_its_model_says_why():
    with pytest.raises(WorkerError, match="not found"):
        WorkerClient(BackendSpec(model="/nonexistent/model.gguf"), python=sys.executable)
