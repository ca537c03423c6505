"""What every LM-scoring stage shares: params, backend, cache, scoring passes, aggregation, decisions.

Flow of :meth:`LMStage.score` on a shard:

1. Only rows still kept are scored; dropped rows get null scores. Rows with the same ``id``
   (identical conversations) are scored once.
2. Each scorer asks for one or more *passes* over *units* = (row id, assistant turn):
   ``lik`` (log-likelihood and entropy of the turn given its context), ``lik_uncond`` (the same
   turn with no instruction, for IFD) or a rating prompt. Each pass looks its units up in the
   :class:`~pipeline.scoring.cache.ScoreCache` under (id, model id, template hash) and sends only
   the missing ones to the backend, in chunks of ``chunk_rows`` requests, caching each chunk as it
   completes. The model is loaded only when something is missing: a rerun with the same config
   loads nothing and scores nothing.
3. Per-turn values are kept as list columns (``<prefix>_turns``) and aggregated into the row score
   with ``turn_agg`` (mean over turns by default; ``sum`` reproduces Deita's multi-turn total).
4. Every score column set comes with ``<prefix>_model`` (the model id: alias or file name plus a
   hash of the file) and ``<prefix>_template`` (hash of the prompt templates, chat-template
   handling and truncation settings), and ``<prefix>_truncated`` (some turn was cut to fit
   ``max_tokens``). The manifest gets the same under the stage's ``models()``.

Decisions (``decide``) apply per-score thresholds: ``drop_above`` / ``drop_below`` (absolute) and
``drop_above_quantile`` / ``drop_below_quantile`` (a fraction of the pool: the quantile is taken
over all kept, scored rows of the run, so a stage with a quantile rule becomes a global stage).
``decide_on`` picks the column (default: the stage's main score). Reasons read
``<stage>:<label><op><value>``, e.g. ``ifd:>1.0``, ``judge:yes_prob<0.3``, ``perplexity:q>0.95``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline import progress
from pipeline.scoring import backend as backends
from pipeline.scoring.cache import ScoreCache, template_hash
from pipeline.scoring.protocol import Backend, BackendSpec, make_requests
from pipeline.scoring.render import ChatRenderer, turn_instructions, turn_responses
from pipeline.stages.base import Col, Resources, RunContext, Stage, StageParams, drop_where, to_polars

TurnAgg = Literal["mean", "first", "last", "min", "max", "sum"]

#: bump when a pass computes something different for the same inputs (invalidates caches)
PASS_VERSION = "1"


class LMParams(StageParams):
    """Params shared by the LM-scoring stages (model, backend, batching, cache, decisions)."""

    model: str = Field("smollm2", description="alias, pkg:NAME/path, local HF dir or .gguf file")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers (CPU/CUDA, HF dir or GGUF) or vllm (CUDA, in a worker process)")
    worker: bool = Field(False, description="run the backend in a worker process (always for vllm)")
    python: str | None = Field(None, description="interpreter for the worker (default: this one)")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="default: the run's device")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="model weights dtype; auto: bfloat16/float16 on CUDA, float32 on CPU")
    trust_remote_code: bool = Field(False, description="allow custom model code from the model directory")
    max_tokens: int = Field(2048, ge=8, description="context + target tokens per request; longer ones are truncated")
    head_tokens: int = Field(32, ge=0, description="context tokens kept from the start when the middle is cut")
    token_budget: int | None = Field(None, ge=16, description="padded tokens per forward batch (default 4096 CPU / 32768 CUDA)")
    max_batch_size: int = Field(64, ge=1, description="most requests per forward batch")
    threads: int | None = Field(None, ge=1, description="CPU threads for the transformers backend (default: torch's)")
    chunk_rows: int = Field(512, ge=1, description="requests per backend call (and per cache write)")
    include_eos: bool = Field(True, description="score the end-of-turn marker with each assistant turn")
    include_reasoning: bool = Field(True, description="render assistant reasoning traces (reasoning_content / "
                                    "<think>) in targets and contexts; false scores turns without them")
    turn_agg: TurnAgg = Field("mean", description="how the per-turn scores of a multi-turn row are combined")
    cache: bool = Field(True, description="reuse scores cached by (id, model, template) from earlier runs")
    cache_dir: str | None = Field(None, description="default: <run cache_dir or run dir>/sidecars/scores")
    sample: float | None = Field(None, gt=0, le=1, description="score only this seeded fraction of the rows "
                                 "(by id and run seed: a try-out on a slice); the others get null scores and "
                                 "are never dropped by this stage's rules")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm only")
    logprobs_topk: int = Field(20, ge=1, description="vllm only: top-k logprobs returned per position")
    drop_above: float | None = Field(None, description="drop rows whose score (decide_on) is above this")
    drop_below: float | None = Field(None, description="drop rows whose score (decide_on) is below this")
    drop_above_quantile: float | None = Field(None, gt=0, lt=1, description="drop rows whose score is above this quantile of the kept, scored rows")
    drop_below_quantile: float | None = Field(None, gt=0, lt=1, description="drop rows whose score is below this quantile of the kept, scored rows")
    decide_on: str | None = Field(None, description="column the drop rules apply to (default: the main score)")

    @model_validator(mode="after")
    def _check(self) -> LMParams:
        if self.backend == "vllm" and self.device == "cpu":
            raise ValueError("backend 'vllm' needs a CUDA device; use backend 'transformers' on CPU")
        return self


def in_sample(key: pl.Expr, fraction: float, seed: int) -> pl.Expr:
    """Whether a row is in a seeded sample of ``fraction`` of the rows, decided by a hash of ``key``
    alone (so the same rows are in it whatever the shards, order or engine)."""
    return (key.hash(seed=seed) % 1_000_003) < int(round(fraction * 1_000_003))


def turn_units(conv: pl.DataFrame, last_only: bool = False) -> pl.DataFrame:
    """``id, turn`` for every assistant turn of every conversation in ``conv`` (or only the last)."""
    n = conv.select(
        "id",
        pl.col("messages").list.eval((pl.element().struct.field("role") == "assistant").cast(pl.Int32)).list.sum()
        .fill_null(0).alias("_n"),
    )
    if last_only:
        return n.filter(pl.col("_n") > 0).select("id", (pl.col("_n") - 1).cast(pl.Int32).alias("turn"))
    return (
        n.filter(pl.col("_n") > 0)
        .select("id", pl.int_ranges(0, pl.col("_n"), dtype=pl.Int32).alias("turn"))
        .explode("turn")
    )


def turn_texts(conv: pl.DataFrame) -> pl.DataFrame:
    """``id, turn, instruction, response`` per assistant turn: the user messages since the previous
    assistant turn and the turn itself (the per-turn pairs Deita scores)."""
    ids, turns, ins, res = [], [], [], []
    for rid, msgs in zip(conv["id"].to_list(), conv["messages"].to_list(), strict=True):
        for t, (i, r) in enumerate(zip(turn_instructions(msgs), turn_responses(msgs), strict=True)):
            ids.append(rid)
            turns.append(t)
            ins.append(i)
            res.append(r)
    return pl.DataFrame({"id": ids, "turn": turns, "instruction": ins, "response": res},
                        schema={"id": pl.String, "turn": pl.Int32, "instruction": pl.String, "response": pl.String})


def rating_matrix(units: pl.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``rating_logprobs`` and ``rating_ids`` of ``units`` as (n, k) arrays; NaN / -1 where missing."""
    lp = np.full((units.height, k), np.nan)
    ids = np.full((units.height, k), -1, dtype=np.int64)
    ok = units["rating_logprobs"].list.len().fill_null(0).to_numpy() == k
    if ok.any():
        sub = units.filter(pl.Series(ok))
        lp[ok] = np.asarray(sub["rating_logprobs"].to_list(), dtype=np.float64)
        ids[ok] = np.asarray(sub["rating_ids"].to_list(), dtype=np.int64)
    return lp, ids


def aggregate_turns(units: pl.DataFrame, value: str, how: TurnAgg, alias: str, turns_alias: str | None = None) -> list[pl.Expr]:
    """Aggregations (for ``group_by("id")`` over units sorted by turn) of ``value`` into a row score."""
    v = pl.col(value)
    nn = v.drop_nulls()
    agg = {
        "mean": nn.mean(),
        "first": nn.first(),
        "last": nn.last(),
        "min": nn.min(),
        "max": nn.max(),
        "sum": pl.when(nn.len() > 0).then(nn.sum()).otherwise(None),
    }[how]
    out = [agg.cast(pl.Float64).alias(alias)]
    if turns_alias:
        out.append(v.cast(pl.Float64).alias(turns_alias))
    return out


class LMStage(Stage):
    """Base of the LM-scoring stages (see the module docstring)."""

    Params: ClassVar[type[StageParams]] = LMParams
    prefix: ClassVar[str] = ""
    main: ClassVar[str] = ""
    label: ClassVar[str] = ""
    resources = Resources(cpus=1.0, gpus=0.0, memory_gb=2.0, loads_model=True)
    requires_columns = ("id", "messages")  # rows are scored once per id, from their messages
    #: stage-specific global inputs (on top of the decision column)
    extra_global_inputs: ClassVar[tuple[str, ...]] = ()
    always_global: ClassVar[bool] = False

    def __init__(self, params: StageParams | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        numeric = [c for c, t in self.columns.items() if t in (pl.Float64, pl.Int64)]
        if p.decide_on is not None and p.decide_on not in numeric:
            raise ValueError(f"{self.name}: decide_on must be one of the stage's numeric columns "
                             f"({', '.join(numeric)}), got {p.decide_on!r}")
        if self.always_global or p.drop_above_quantile is not None or p.drop_below_quantile is not None:
            self.scope = "global"  # type: ignore[misc]
        if p.backend == "vllm" or p.device == "cuda":
            self.resources = Resources(cpus=1.0, gpus=1.0, memory_gb=4.0, loads_model=True)  # type: ignore[misc]
        self._backend: Backend | None = None
        self._renderer: ChatRenderer | None = None
        self._model_id: str | None = None
        self._cache_root: Path | None = None
        self._counts: dict[str, Any] = {"rows_scored": 0, "units": 0, "units_cached": 0, "units_computed": 0,
                                         "unit_errors": 0, "units_truncated": 0, "backend_s": 0.0}
        self._cutoffs: dict[str, float] = {}
        self._bstats: dict[str, float] = {}  # this stage's share of the (shared) backend's counters

    # ------------------------------------------------------------------ config
    @property
    def decide_col(self) -> str:
        return self.params.decide_on or self.main

    def global_inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.decide_col, *self.extra_global_inputs)))

    def writes(self) -> dict[str, Col]:
        out = super().writes()
        p = self.params
        for q, alias in ((p.drop_above_quantile, "_qhi"), (p.drop_below_quantile, "_qlo")):
            if q is not None:  # the pool-quantile verdict, set by the global step for decide
                out[f"_{self.name}{alias}"] = Col(pl.Boolean, "internal", "global")
        return out

    def backend_spec(self) -> BackendSpec:
        p = self.params
        device = p.device or (self.ctx.device if self.ctx.device in ("auto", "cpu", "cuda") else "auto")
        return BackendSpec(backend=p.backend, model=p.model, device=device, dtype=p.dtype,
                           trust_remote_code=p.trust_remote_code, max_tokens=p.max_tokens,
                           head_tokens=p.head_tokens, token_budget=p.token_budget,
                           max_batch_size=p.max_batch_size, threads=p.threads, gpu_memory_utilization=p.gpu_memory_utilization,
                           logprobs_topk=p.logprobs_topk)

    def pass_spec(self) -> dict[str, Any]:
        """What, besides the model, shapes every pass of this stage (part of each template hash)."""
        p = self.params
        spec = {"v": PASS_VERSION, "max_tokens": p.max_tokens, "head_tokens": p.head_tokens,
                "include_eos": p.include_eos}
        if not p.include_reasoning:  # only when not the default: caches of existing configs stay valid
            spec["include_reasoning"] = False
        return spec

    def template_spec(self) -> dict[str, Any]:
        """Everything hashed into ``<prefix>_template``; scorers add their prompt templates."""
        return {"stage": self.name, **self.pass_spec()}

    @property
    def template(self) -> str:
        return template_hash(self.template_spec())

    # ------------------------------------------------------------------ lifecycle
    def setup(self, ctx: RunContext | None = None) -> None:
        super().setup(ctx)
        from pipeline.models import resolve_model

        self._model_id = resolve_model(self.params.model).model_id  # cheap; fails early if missing
        p = self.params
        if p.cache:
            root = Path(p.cache_dir).expanduser() if p.cache_dir else self.ctx.sidecar_dir("scores")
            self._cache_root = root
        else:
            self._cache_root = None

    def teardown(self) -> None:
        if self._backend is not None:
            backends.release(self._backend)
            self._backend = None
            self._renderer = None
        super().teardown()

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self.setup(self.ctx)
        return self._model_id  # type: ignore[return-value]

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            p = self.params
            self._backend = backends.acquire(self.backend_spec(), worker=p.worker, python=p.python)
        return self._backend

    @property
    def renderer(self) -> ChatRenderer:
        if self._renderer is None:
            info = self.backend.info()
            self._renderer = ChatRenderer(info.get("chat_template"), info.get("bos_token"), info.get("eos_token"),
                                          include_eos=self.params.include_eos,
                                          include_reasoning=self.params.include_reasoning)
        return self._renderer

    def cache(self, kind: str, spec: dict[str, Any]) -> ScoreCache:
        return ScoreCache(self._cache_root, kind, self.model_id, template_hash({"kind": kind, **spec}))

    # ------------------------------------------------------------------ running requests
    def _execute(self, keys: pl.DataFrame, requests: pa.Table) -> pl.DataFrame:
        """Responses for ``requests`` beside ``keys`` (same row order)."""
        before = self.backend.stats()
        t0 = time.perf_counter()
        resp = pl.from_arrow(self.backend.score(requests))
        self._counts["backend_s"] += time.perf_counter() - t0
        after = self.backend.stats()
        for k, v in after.items():
            if isinstance(v, (int, float)) and isinstance(before.get(k), (int, float)):
                self._bstats[k] = self._bstats.get(k, 0) + v - before[k]
        return pl.concat([keys, resp], how="horizontal")  # type: ignore[list-item]

    def _run_pass(self, cache: ScoreCache, units: pl.DataFrame, build: Any, finish: Any) -> pl.DataFrame:
        """Cached values for ``units`` (``id, turn``); missing ones built, scored, finished and cached.

        ``build(missing) -> (keys, requests)`` makes requests for the missing units (a frame of
        ``id, turn`` in request order); ``finish(frame)`` turns keys + responses into the pass's value
        columns (``id, turn, ..., truncated, error``).
        """
        self._counts["units"] += units.height
        have = cache.lookup(units["id"].unique()) if units.height else None
        if have is not None:
            have = have.join(units, on=["id", "turn"], how="semi")
            missing = units.join(have, on=["id", "turn"], how="anti")
            self._counts["units_cached"] += have.height
        else:
            missing = units
        parts = [have] if have is not None and have.height else []
        if missing.height:
            keys, requests = build(missing)
            task = f"{self.name}: {cache.kind} pass"
            progress.expect(task, requests.num_rows)
            for s in range(0, requests.num_rows, self.params.chunk_rows):
                k = keys.slice(s, self.params.chunk_rows)
                with progress.within(task) as reported:  # an in-process backend reports per batch
                    resp = self._execute(k, requests.slice(s, self.params.chunk_rows))
                progress.advance(task, k.height - reported[0])  # a worker backend: per chunk
                got = finish(resp)
                ok = got.filter(pl.col("error").is_null())
                cache.put(ok)
                self._counts["units_computed"] += got.height
                self._counts["unit_errors"] += got.height - ok.height
                parts.append(got)
        if not parts:
            return pl.DataFrame()
        out = pl.concat(parts, how="diagonal_relaxed")
        if "truncated" in out.columns:
            self._counts["units_truncated"] += int(out["truncated"].fill_null(False).sum())
        return out

    @staticmethod
    def _missing_messages(conv: pl.DataFrame, missing: pl.DataFrame) -> list[tuple[str, list[dict[str, Any]], set[int], Any]]:
        """(id, messages, turns wanted, tool definitions) for the conversations that have missing units."""
        want = missing.group_by("id", maintain_order=True).agg(pl.col("turn"))
        sub = want.join(conv, on="id", how="left", maintain_order="left")
        tools = sub["tools"].to_list() if "tools" in sub.columns else [None] * sub.height
        return [(i, m, set(t), tl) for i, m, t, tl in zip(sub["id"].to_list(), sub["messages"].to_list(),
                                                          sub["turn"].to_list(), tools, strict=True)]

    def lik_pass(self, conv: pl.DataFrame, units: pl.DataFrame) -> pl.DataFrame:
        """Per unit: ``nll`` (mean negative log-likelihood per target token), ``entropy`` (mean
        predictive entropy), ``n_tokens`` scored, ``n_tokens_in`` before truncation, ``truncated``."""
        def build(missing: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
            ids, turns, ctxs, tgts = [], [], [], []
            for rid, msgs, want, tools in self._missing_messages(conv, missing):
                for t, c, y in self.renderer.turn_pairs(msgs, want, tools):
                    ids.append(rid)
                    turns.append(t)
                    ctxs.append(c)
                    tgts.append(y)
            keys = pl.DataFrame({"id": ids, "turn": turns}, schema={"id": pl.String, "turn": pl.Int32})
            return keys, make_requests(ctxs, tgts, entropy=True, max_tokens=self.params.max_tokens)

        return self._run_pass(self.cache("lik", self.pass_spec()), units, build, _finish_lik)

    def uncond_pass(self, conv: pl.DataFrame, units: pl.DataFrame, cond: pl.DataFrame) -> pl.DataFrame:
        """The ``lik`` values of each unit's turn with no instruction (IFD), over the same target tokens."""

        def build(missing: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
            ids, turns, tgts = [], [], []
            for rid, msgs, want, tools in self._missing_messages(conv, missing):
                for t, _c, y in self.renderer.turn_pairs(msgs, want, tools):
                    ids.append(rid)
                    turns.append(t)
                    tgts.append(y)
            keys = pl.DataFrame({"id": ids, "turn": turns}, schema={"id": pl.String, "turn": pl.Int32})
            cap = keys.join(cond.select("id", "turn", "n_tokens"), on=["id", "turn"], how="left",
                            maintain_order="left")["n_tokens"].to_list()
            ctx = self.renderer.uncond_context()
            return keys, make_requests([ctx] * len(tgts), tgts, entropy=False, max_target=cap,
                                       max_tokens=self.params.max_tokens)

        return self._run_pass(self.cache("lik_uncond", self.pass_spec()), units, build, _finish_lik)

    def rating_pass(self, name: str, texts: pl.DataFrame, candidates: list[str], fmt: str,
                    spec: dict[str, Any]) -> pl.DataFrame:
        """Per unit (``texts``: ``id, turn, text``): ``rating_logprobs`` / ``rating_ids`` of ``candidates``
        at the answer position of the rating prompt ``text`` (rendered as a user turn, or raw)."""

        def build(missing: pl.DataFrame) -> tuple[pl.DataFrame, pa.Table]:
            sub = texts.join(missing, on=["id", "turn"], how="semi", maintain_order="left")
            prompts = [self.renderer.prompt(t, fmt) for t in sub["text"].to_list()]
            return sub.select("id", "turn"), make_requests(prompts, [""] * len(prompts), rating=candidates,
                                                           max_tokens=self.params.max_tokens)

        def finish(f: pl.DataFrame) -> pl.DataFrame:
            return f.select("id", "turn", "rating_logprobs", "rating_ids", "truncated", "error")

        kind_spec = {**self.pass_spec(), **spec, "candidates": candidates, "format": fmt}
        return self._run_pass(self.cache(f"rating-{name}", kind_spec), texts.select("id", "turn"), build, finish)

    # ------------------------------------------------------------------ the stage halves
    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        """Per row id: the stage's score columns (minus model/template); a ``_truncated`` column becomes ``<prefix>_truncated``."""
        raise NotImplementedError

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        df = to_polars(df)
        conv = (df.filter(pl.col("keep")).select("id", "messages", *(["tools"] if "tools" in df.columns else []))
                .unique("id", maintain_order=True))
        if self.params.sample is not None:  # the same rows in every shard layout and run: by id and seed
            conv = conv.filter(in_sample(pl.col("id"), self.params.sample, self.ctx.seed))
        new_cols = {c: t for c, t in self.columns.items() if not c.startswith("_")}
        if conv.height:
            rows = self.compute(conv).rename({"_truncated": f"{self.prefix}_truncated"}, strict=False)
            self._counts["rows_scored"] += rows.height
        else:
            rows = pl.DataFrame(schema={"id": pl.String})
        rows = rows.with_columns(
            pl.lit(self.model_id, pl.String).alias(f"{self.prefix}_model"),
            pl.lit(self.template, pl.String).alias(f"{self.prefix}_template"),
        )
        missing = [pl.lit(None, dtype=t).alias(c) for c, t in new_cols.items() if c not in rows.columns]
        rows = rows.with_columns(missing).select(["id", *new_cols]).cast(new_cols)  # type: ignore[arg-type]
        out = df.select(pl.col("id"), pl.col("keep")).join(rows, on="id", how="left", maintain_order="left")
        kept = pl.col("keep")
        return df.with_columns(
            [pl.when(kept).then(out[c]).otherwise(None).alias(c) for c in new_cols]
        )

    def score_global(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        col = self.decide_col
        if col not in df.columns:
            raise ValueError(f"{self.name}: decide_on column {col!r} is not among the stage's columns")
        pool = df.filter(pl.col("keep") & pl.col(col).is_not_null())[col].cast(pl.Float64)
        adds = []
        for q, op, alias in ((p.drop_above_quantile, ">", "_qhi"), (p.drop_below_quantile, "<", "_qlo")):
            if q is None:
                continue
            cut = pool.quantile(q, "linear") if pool.len() else None
            self._cutoffs[f"q{op}{q}"] = cut
            flag = (pl.col(col) > cut) if op == ">" else (pl.col(col) < cut)
            adds.append((flag if cut is not None else pl.lit(False)).alias(f"_{self.name}{alias}"))
        return df.with_columns(adds) if adds else df

    def _rule_label(self) -> str:
        if self.params.decide_on is None or self.params.decide_on == self.main:
            return self.label
        return self.params.decide_on.removeprefix(f"{self.prefix}_")

    def decide(self, df: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        col, lbl = self.decide_col, self._rule_label()
        if p.drop_above is not None:
            df = drop_where(df, pl.col(col) > p.drop_above, f"{self.name}:{lbl}>{p.drop_above}")
        if p.drop_below is not None:
            df = drop_where(df, pl.col(col) < p.drop_below, f"{self.name}:{lbl}<{p.drop_below}")
        qlbl = f"{lbl}_q" if lbl else "q"
        if p.drop_above_quantile is not None and f"_{self.name}_qhi" in df.columns:
            df = drop_where(df, pl.col(f"_{self.name}_qhi"), f"{self.name}:{qlbl}>{p.drop_above_quantile}")
        if p.drop_below_quantile is not None and f"_{self.name}_qlo" in df.columns:
            df = drop_where(df, pl.col(f"_{self.name}_qlo"), f"{self.name}:{qlbl}<{p.drop_below_quantile}")
        return df

    # ------------------------------------------------------------------ manifest
    def models(self) -> dict[str, Any]:
        return {"model": self.params.model, "model_id": self.model_id, "backend": self.params.backend,
                "template": self.template, "worker": self.params.worker or self.params.backend == "vllm"}

    def summary(self) -> dict[str, Any]:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self._counts.items()}
        if self._cutoffs:
            out["quantile_cutoffs"] = self._cutoffs
        if self._renderer is not None:
            out["template_fallbacks"] = self._renderer.fallbacks
        if self._bstats:
            st = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self._bstats.items()}
            if st.get("padded_tokens"):
                st["padding_waste"] = round(1 - st["real_tokens"] / st["padded_tokens"], 4)
            out["backend"] = st
        return out


def _finish_lik(f: pl.DataFrame) -> pl.DataFrame:
    """Per-unit likelihood values from keys + responses."""
    n = pl.col("n_target").cast(pl.Int32)
    has = n > 0
    return f.select(
        "id",
        "turn",
        pl.when(has).then(-pl.col("token_logprobs").list.sum().cast(pl.Float64) / n).alias("nll"),
        pl.when(has).then(pl.col("token_entropy").list.sum().cast(pl.Float64) / n).alias("entropy"),
        n.alias("n_tokens"),
        pl.col("n_target_in").cast(pl.Int32).alias("n_tokens_in"),
        pl.col("truncated"),
        pl.when(pl.col("error").is_null() & ~has).then(pl.lit("no_target_tokens")).otherwise(pl.col("error"))
        .alias("error"),
    )


def per_row(units: pl.DataFrame, aggs: list[pl.Expr]) -> pl.DataFrame:
    """Group units (``id, turn, ...``) by id in turn order and apply ``aggs`` (plus ``truncated`` = any)."""
    if units.height == 0:
        return pl.DataFrame(schema={"id": pl.String})
    extra = [pl.col("truncated").fill_null(False).any().alias("_truncated")] if "truncated" in units.columns else []
    return units.sort(["id", "turn"]).group_by("id", maintain_order=True).agg([*aggs, *extra])


def lm_function(cls: type[LMStage]) -> Any:
    """The plain-function form of an LM stage: ``fn(table, **params) -> scored table`` (the model is
    released after the call), with its params in the signature and docstring."""
    from pipeline.stages.functions import stage_function

    return stage_function(cls)


__all__ = ["LMParams", "LMStage", "turn_units", "aggregate_turns", "per_row", "lm_function"]
