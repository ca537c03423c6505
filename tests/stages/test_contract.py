"""Contract checks generated over the stage registry (as scikit-learn's ``check_estimator``).

Every stage registered in :data:`pipeline.stages.REGISTRY` (selectors included) is run on a small
real sample (GSM8K, Code Alpaca and FastChat rows, with a planted exact duplicate, a planted GSM8K
test item and two rows an earlier stage already dropped) and checked against its own declaration
(:meth:`~pipeline.stages.base.Stage.contract`):

* rows are neither removed nor reordered, and input columns are left as they were;
* ``keep`` only turns true -> false (a selector never touches it), and the reason of a new drop
  (or a selector's ``select_reason``) starts with the declared prefix;
* every declared column is present with its declared dtype, and no undeclared column appears;
* the fingerprint is the same for two instances, after a run and in another process;
* the plain function form gives the same table as the class;
* the declared inputs are the ones read: the stage gives the same columns on a frame cut down to
  them, and fails without any one of its required columns;
* a global step fed only its declared ``global_frame_columns()`` (as the runner gathers them)
  writes what the in-memory call writes.

A new stage is picked up from the registry. Its cheap params go in :data:`CHEAP` when its params
have required fields; columns it requires are produced by the registered stage that declares them.
LM stages run the real SmolLM2 (one shared model, four rows, a shared score cache); embedding
stages and vector selectors the real MiniLM (one sidecar store for the module).
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.io.readers import read_table
from pipeline.schema import KEY_COLUMNS, message_id, with_decision
from pipeline.stages import REGISTRY, available_stages, get_stage
from pipeline.stages.base import RunContext, Stage
from pipeline.stages.contract import BASE_COLUMNS

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"
LM_MAX_TOKENS = 160
STAGES = available_stages()

#: cheap params per stage (params a stage cannot do without, and small sizes); LM stages also get
#: :func:`_lm_params`. Paths are filled in by :func:`_params`.
CHEAP: dict[str, dict[str, Any]] = {
    "length": {"min_response_tokens": 20},
    "heuristics": {"max_non_alnum_ratio": 0.3},
    "minhash_dedup": {"num_perm": 64},
    "decontaminate": {"benchmarks": ["{real}/gsm8k_test.jsonl.gz"]},
    "semantic_dedup": {"n_clusters": 2, "gpu": "cpu"},
    "cluster": {"k": 3, "device": "cpu", "summary_columns": ["len_response_tokens"]},
    "perplexity": {"drop_above_quantile": 0.7},
    "ifd": {"drop_above": 1.0},
    "judge": {"drop_below": 0.5},
    "error_uncertainty": {"drop_quadrants": ["Q1"]},
    "select_random": {"budget": 5},
    "select_top_k": {"budget": 5, "column": "len_response_tokens"},
    "long_is_more": {"budget": 5},
    "kmq": {"budget": 5, "k": 3, "score": "len_response_tokens", "device": "cpu"},
    "repr_filter": {"budget": 5, "score": "len_response_tokens", "device": "cpu"},
    "rds_plus": {"budget": 5, "target": "{tmp}/target.jsonl", "device": "cpu"},
    "ds2": {"budget": 5, "rating": "len_turns", "k": 3, "device": "cpu"},
}


def _is_lm(cls: type) -> bool:
    from pipeline.scoring.base import LMStage

    return issubclass(cls, LMStage)


# ---------------------------------------------------------------- the sample


def _short(df: pl.DataFrame, n: int, max_chars: int) -> pl.DataFrame:
    size = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
    return df.filter(size <= max_chars).head(n)


def _read(name: str) -> pl.DataFrame:
    rows, _ = read_table(str(REAL / name))
    return rows


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real data not found at {REAL}")
    tmp = tmp_path_factory.mktemp("contract")
    # a tiny RDS+ target: five GSM8K test questions
    test = _read("gsm8k_test.jsonl.gz").head(5)
    with (tmp / "target.jsonl").open("w") as f:
        for m in test["messages"].to_list():
            f.write(json.dumps({"messages": m}) + "\n")
    return tmp


def _predropped(df: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    """``df`` with the decision columns, ``rows`` already dropped by an earlier (made-up) stage."""
    hit = pl.Series(np.isin(np.arange(df.height), rows))
    return with_decision(df).with_columns(
        pl.when(hit).then(False).otherwise(pl.col("keep")).alias("keep"),
        pl.when(hit).then(pl.lit("upstream:test")).otherwise(pl.col("drop_reason")).alias("drop_reason"),
    )


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    """24 real rows: GSM8K train, Code Alpaca, multi-turn FastChat, a planted exact duplicate, a
    planted GSM8K test item; rows 3 and 11 already dropped."""
    gsm = _short(_read("gsm8k_train.jsonl.gz"), 8, 1200)
    code = _short(_read("code_alpaca_2k.json.gz"), 8, 800)
    chat = _short(_read("fastchat_dummy_conversation.json.gz").filter(pl.col("messages").list.len() >= 4), 4, 1500)
    leak = _read("gsm8k_test.jsonl.gz").slice(3, 1)
    dup = gsm.head(1)
    parts = [gsm, code, chat, leak, dup, code.slice(2, 1)]
    df = pl.concat([p.select(gsm.columns) for p in parts])
    df = df.with_columns(pl.lit("contract_sample").alias("source"), pl.int_range(pl.len(), dtype=pl.Int64).alias("source_row"))
    return _predropped(df, [3, 11])


@pytest.fixture(scope="module")
def lm_sample() -> pl.DataFrame:
    """Five short real rows for the LM stages: two GSM8K rows, one multi-turn FastChat row, a second
    response to the first GSM8K question (a GRAPE group of two), and one row already dropped."""
    gsm = _short(_read("gsm8k_train.jsonl.gz"), 3, 400)
    chat = _short(_read("fastchat_dummy_conversation.json.gz").filter(pl.col("messages").list.len() >= 4), 1, 300)
    msgs0, msgs1 = gsm["messages"][0].to_list(), gsm["messages"][1].to_list()
    alt = pl.DataFrame({"messages": [[msgs0[0], msgs1[-1]]]}, schema={"messages": gsm.schema["messages"]})
    alt = alt.with_columns(pl.lit(message_id([msgs0[0], msgs1[-1]])).alias("id"), pl.lit(None, pl.String).alias("tools"),
                          pl.lit("x").alias("source"), pl.lit(0, pl.Int64).alias("source_row"))
    df = pl.concat([gsm.head(2), chat.select(gsm.columns), alt.select(gsm.columns), gsm.slice(2, 1)],
                   how="vertical_relaxed")
    df = df.with_columns(pl.lit("contract_lm").alias("source"), pl.int_range(pl.len(), dtype=pl.Int64).alias("source_row"))
    return _predropped(df, [4])


@pytest.fixture(scope="module")
def ctx(work: Path) -> RunContext:
    return RunContext(cache_dir=work / "cache", seed=0, device="cpu")


@pytest.fixture(scope="module")
def smol_backend():
    """The real SmolLM2, opened once and shared by every LM stage of this module."""
    pytest.importorskip("transformers")
    from pipeline.scoring import backend as backends
    from pipeline.scoring.perplexity import Perplexity

    spec = Perplexity(max_tokens=LM_MAX_TOKENS, device="cpu").backend_spec()
    b = backends.open_backend(spec)
    backends.register(spec, b)
    yield b
    backends.release(b)


# ---------------------------------------------------------------- running a stage


def _lm_params(work: Path) -> dict[str, Any]:
    return {"max_tokens": LM_MAX_TOKENS, "device": "cpu", "cache_dir": str(work / "scores")}


def _params(name: str, work: Path) -> dict[str, Any]:
    raw = json.loads(json.dumps(CHEAP.get(name, {})).replace("{real}", str(REAL)).replace("{tmp}", str(work)))
    return {**(_lm_params(work) if _is_lm(get_stage(name)) else {}), **raw}


def _build(name: str, work: Path) -> Stage:
    cls = get_stage(name)
    try:
        return cls(_params(name, work))
    except Exception as e:  # noqa: BLE001 - say what a new stage's author must add
        pytest.fail(f"{name}: cannot build with cheap params {_params(name, work)} ({e}); add them to CHEAP")


_WRITERS: dict[str, str] = {}


def _writer_of(column: str) -> str:
    """The registered stage that declares ``column`` (to produce a required input)."""
    if not _WRITERS:
        for n in STAGES:
            for c in get_stage(n).column_specs:
                _WRITERS.setdefault(c, n)
    if column not in _WRITERS:
        pytest.fail(f"no registered stage writes column {column!r}")
    return _WRITERS[column]


class Runs:
    """Each stage's input (the sample plus what its required columns need) and in-memory output, once."""

    def __init__(self, sample: pl.DataFrame, lm_sample: pl.DataFrame, work: Path, ctx: RunContext, request: Any):
        self.sample, self.lm_sample, self.work, self.ctx, self.request = sample, lm_sample, work, ctx, request
        self.inputs: dict[str, pl.DataFrame] = {}
        self.outputs: dict[str, pl.DataFrame] = {}

    def stage(self, name: str) -> Stage:
        if _is_lm(get_stage(name)):
            self.request.getfixturevalue("smol_backend")
        return _build(name, self.work)

    def input(self, name: str) -> pl.DataFrame:
        if name not in self.inputs:
            st = self.stage(name)
            df = self.lm_sample if _is_lm(type(st)) else self.sample
            for col in st.requires():
                if col not in df.columns:
                    producer = _writer_of(col)
                    assert producer != name, f"{name} requires its own column {col!r}"
                    df = self.stage(producer)(df, self.ctx)
            self.inputs[name] = df
        return self.inputs[name]

    def output(self, name: str) -> pl.DataFrame:
        if name not in self.outputs:
            self.outputs[name] = self.stage(name)(self.input(name), self.ctx)
        return self.outputs[name]


@pytest.fixture(scope="module")
def runs(sample, lm_sample, work, ctx, request) -> Runs:
    return Runs(sample, lm_sample, work, ctx, request)


# ---------------------------------------------------------------- the checks


def test_registry_is_covered() -> None:
    """Every registered stage imports (its declaration is checked at class definition) and is here."""
    assert set(STAGES) == set(REGISTRY), f"stage modules missing from this install: {set(REGISTRY) - set(STAGES)}"


@pytest.mark.parametrize("name", STAGES)
def test_declaration(name: str, work: Path) -> None:
    st = _build(name, work)
    c = st.contract()
    assert json.loads(json.dumps(c)) == c
    assert c["name"] == name and c["reason_prefix"] and ":" not in c["reason_prefix"]
    assert c["is_selector"] == st.is_selector and c["scope"] == st.scope
    assert set(c["writes"]) == set(st.output_schema())
    for col, spec in c["writes"].items():
        assert spec["role"] in ("score", "flag", "internal") and spec["phase"] in ("row", "global"), col
        assert spec["phase"] == "row" or st.scope == "global", col
        if col.startswith("_"):
            assert spec["role"] == "internal", col
    readable = {*BASE_COLUMNS, *c["requires"], *c["uses"], *c["writes"]}
    assert set(c["global_inputs"]) <= readable, "global inputs must be declared inputs or the stage's own columns"
    if st.is_selector:
        assert {"selected", "select_reason", "select_rank"} <= set(c["writes"])
    assert st.summary() is None or isinstance(st.summary(), dict)


@pytest.mark.parametrize("name", STAGES)
def test_rows_kept_in_order_and_inputs_untouched(name: str, runs: Runs) -> None:
    inp, out = runs.input(name), runs.output(name)
    assert out.height == inp.height
    assert out.select(KEY_COLUMNS).equals(inp.select(KEY_COLUMNS))
    mine = set(runs.stage(name).writes())
    same = [c for c in inp.columns if c not in mine and c not in ("keep", "drop_reason")]
    assert_frame_equal(out.select(same), inp.select(same))


@pytest.mark.parametrize("name", STAGES)
def test_keep_only_turns_false_with_the_declared_prefix(name: str, runs: Runs) -> None:
    st = runs.stage(name)
    inp, out = runs.input(name), runs.output(name)
    was, now = inp["keep"].to_numpy(), out["keep"].to_numpy()
    assert not (now & ~was).any(), "a dropped row came back"
    assert out.filter(~pl.Series(was))["drop_reason"].equals(inp.filter(~pl.Series(was))["drop_reason"])
    new = out.filter(pl.Series(was & ~now))["drop_reason"]
    if st.is_selector:
        assert new.len() == 0, "a selector changed keep"
        picked = out.filter(pl.col("selected").fill_null(False))["select_reason"]
        assert picked.len() > 0
        assert picked.str.starts_with(f"{st.drop_prefix()}:").all(), picked.to_list()
    else:
        assert new.is_not_null().all()
        assert new.str.starts_with(f"{st.drop_prefix()}:").all(), new.to_list()


@pytest.mark.parametrize("name", STAGES)
def test_declared_columns_present_with_declared_types(name: str, runs: Runs) -> None:
    st = runs.stage(name)
    inp, out = runs.input(name), runs.output(name)
    writes = st.writes()
    for col, spec in writes.items():
        if col in out.columns:
            assert out.schema[col] == spec.dtype, f"{col}: {out.schema[col]} != declared {spec.dtype}"
        else:
            assert col.startswith("_"), f"declared column {col!r} missing (only scratch '_' columns may be)"
    undeclared = set(out.columns) - set(inp.columns) - set(writes)
    assert not undeclared, f"undeclared columns written: {sorted(undeclared)}"


@pytest.mark.parametrize("name", STAGES)
def test_fingerprint_stable(name: str, runs: Runs, fingerprints: dict[str, str]) -> None:
    a, b = runs.stage(name), runs.stage(name)
    assert a.fingerprint() == b.fingerprint()
    runs.output(name)
    a(runs.input(name), runs.ctx)
    assert a.fingerprint() == b.fingerprint() == fingerprints[name], "fingerprint differs after a run or across processes"


@pytest.fixture(scope="module")
def fingerprints(work: Path) -> dict[str, str]:
    """Every stage's fingerprint computed in a fresh process."""
    params = {n: _params(n, work) for n in STAGES}
    code = ("import json, sys\nfrom pipeline.stages import get_stage\nparams = json.load(sys.stdin)\n"
            "print(json.dumps({n: get_stage(n)(p).fingerprint() for n, p in params.items()}))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(params), capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=120)
    return json.loads(out.stdout)


def _function_form(cls: type[Stage]) -> Any:
    mod = sys.modules[cls.__module__]
    for fname in dict.fromkeys([cls.name, cls.name.removeprefix("select_")]):
        fn = getattr(mod, fname, None)
        if inspect.isfunction(fn):
            return fn
    pytest.fail(f"{cls.__module__} has no plain function {cls.name}(table, **params) beside {cls.__name__}")


@pytest.mark.parametrize("name", STAGES)
def test_function_form_equals_class_form(name: str, runs: Runs) -> None:
    cls = get_stage(name)
    fn = _function_form(cls)
    runs.stage(name)  # the shared model for LM stages
    kwargs = dict(_params(name, runs.work))
    if "ctx" in inspect.signature(fn).parameters:
        kwargs["ctx"] = runs.ctx
    got = fn(runs.input(name), **kwargs)
    assert_frame_equal(got, runs.output(name))


@pytest.mark.parametrize("name", STAGES)
def test_function_form_on_an_empty_pandas_table(name: str, runs: Runs) -> None:
    """Zero rows (a filter upstream that kept nothing) come back as zero rows of the same kind with
    the stage's columns, not a failure: pandas types an empty ``messages`` column as text."""
    cls = get_stage(name)
    fn = _function_form(cls)
    runs.stage(name)
    kwargs = dict(_params(name, runs.work))
    if "ctx" in inspect.signature(fn).parameters:
        kwargs["ctx"] = runs.ctx
    empty = runs.input(name).head(0).to_pandas()
    got = fn(empty, **kwargs)
    assert type(got) is type(empty) and len(got) == 0
    assert set(_written(runs.output(name), runs.stage(name))) <= set(got.columns)


def _written(out: pl.DataFrame, st: Stage) -> list[str]:
    return [c for c in st.writes() if c in out.columns and not c.startswith("_")] + ["keep", "drop_reason"]


@pytest.mark.parametrize("name", STAGES)
def test_declared_inputs_are_the_ones_read(name: str, runs: Runs) -> None:
    st = runs.stage(name)
    inp, full = runs.input(name), runs.output(name)
    base = [*KEY_COLUMNS, "keep", "drop_reason"]
    cut = inp.select([c for c in dict.fromkeys([*base, *st.requires(), *st.uses()]) if c in inp.columns])
    out = runs.stage(name)(cut, runs.ctx)
    cols = _written(full, st)
    assert_frame_equal(out.select(cols), full.select(cols))
    # an empty sidecar store: a vector stage must embed, so it must read the text and the ids
    fresh = RunContext(cache_dir=runs.work / f"fresh-{name}", seed=0, device="cpu")
    for col in st.requires():
        if col in base:
            continue
        with pytest.raises(Exception):  # noqa: B017, PT011 - any failure: the column is read
            runs.stage(name)(cut.drop(col), fresh)


@pytest.mark.parametrize("name", [n for n in STAGES if get_stage(n).scope == "global"
                                  or "drop_above_quantile" in CHEAP.get(n, {})])
def test_global_step_on_the_gathered_frame(name: str, runs: Runs) -> None:
    """The runner gathers only ``global_frame_columns()`` from the shards (lazy inputs are read on
    demand): the global step must write from that what it writes on the whole table."""
    st = runs.stage(name)
    assert st.scope == "global"
    full = runs.output(name)
    st.setup(runs.ctx)
    scored = st.score(runs.input(name))
    keep = [c for c in st.global_frame_columns() if c not in st.global_lazy_inputs]
    missing = [c for c in keep if c not in scored.columns]
    # the runner gathers the inputs the shards have: only optional ones (uses) may be missing
    assert set(missing) <= set(st.uses()), f"global inputs neither declared optional nor in the scored frame: {missing}"
    keep = [c for c in keep if c in scored.columns]
    g = scored.select(keep).with_columns(pl.lit(0, pl.Int64).alias("_shard"),
                                         pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"))
    if st.global_lazy_inputs:
        st.column_reader = lambda col, rows: scored[col].gather(rows)
    g2 = st.score_global(g)
    assert g2.height == g.height and g2["_pos"].equals(g["_pos"])
    glob = [c for c, spec in st.writes().items() if spec.phase == "global" and c in full.columns]
    assert glob, "a global stage declares the columns its global step writes"
    assert_frame_equal(g2.select(glob), full.select(glob))


# ---------------------------------------------------------------- the declaration itself


def test_a_malformed_stage_fails_when_its_class_is_defined() -> None:
    from pipeline.stages.base import Col, StageParams
    from pipeline.stages.contract import StageDefinitionError

    with pytest.raises(StageDefinitionError, match="role must be one of"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"x": Col(pl.Int64, "sco")}})
    with pytest.raises(StageDefinitionError, match="phase 'global' but the stage's scope is 'row'"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"x": Col(pl.Int64, "score", "global")}})
    with pytest.raises(StageDefinitionError, match="a global stage declares each column as Col"):
        type("Bad", (Stage,), {"name": "bad", "scope": "global", "columns": {"x": pl.Int64}})
    with pytest.raises(StageDefinitionError, match="declare a Polars dtype or Col"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"x": int}})
    with pytest.raises(StageDefinitionError, match="not a Polars dtype"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"x": Col(int)}})
    with pytest.raises(StageDefinitionError, match="canonical or a decision column"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"keep": pl.Boolean}})
    with pytest.raises(StageDefinitionError, match="only selectors"):
        type("Bad", (Stage,), {"name": "bad", "columns": {"selected": pl.Boolean}})
    with pytest.raises(StageDefinitionError, match="global_inputs must be a method"):
        type("Bad", (Stage,), {"name": "bad", "global_inputs": ("id",)})
    with pytest.raises(StageDefinitionError, match="global_inputs must be a method"):
        type("Bad", (Stage,), {"name": "bad", "global_inputs": property(lambda self: ("id",))})
    with pytest.raises(StageDefinitionError, match="not a field of"):
        type("Bad", (Stage,), {"name": "bad", "input_params": ("column",)})
    with pytest.raises(StageDefinitionError, match="lower_snake_case"):
        type("Bad", (Stage,), {"name": "Bad Stage"})
    with pytest.raises(StageDefinitionError, match="reason_prefix"):
        type("Bad", (Stage,), {"name": "bad", "reason_prefix": "bad:x"})
    with pytest.raises(StageDefinitionError, match="Params must be"):
        type("Bad", (Stage,), {"name": "bad", "Params": dict})

    class P(StageParams):
        column: str = "ifd"

    ok = type("Good", (Stage,), {"name": "good", "Params": P, "input_params": ("column",),
                                 "columns": {"good_x": pl.Float64, "good_ok": pl.Boolean, "good_tag": pl.String}})
    assert ok.reason_prefix == "good" and ok.columns == {"good_x": pl.Float64, "good_ok": pl.Boolean, "good_tag": pl.String}
    c = ok().contract()
    assert c["requires"] == ["ifd"] and c["writes"]["good_x"] == {"type": "Float64", "role": "score", "phase": "row"}
    assert c["writes"]["good_ok"]["role"] == "flag" and c["writes"]["good_tag"]["role"] == "internal"
    assert ok().summary() is None and ok().models() is None


def test_manifest_helpers_read_the_contract(work: Path) -> None:
    from pipeline.stages.contract import column_roles, global_writes, reason_owners, stage_of_reason

    stages = [{"name": n, "contract": _build(n, work).contract()} for n in ("length", "exact_dedup", "decontaminate",
                                                                           "minhash_dedup", "kmq")]
    assert stage_of_reason("exact:dup", stages) == 1
    assert stage_of_reason("decontam:gsm8k_test:12", stages) == 2
    assert stage_of_reason("minhash:dup", stages) == 3
    assert stage_of_reason("length:response_tokens<20", stages) == 0
    assert stage_of_reason("ifd:>1.0", stages) is None and stage_of_reason(None, stages) is None
    # an older manifest without the contract: the registered class's prefix
    assert stage_of_reason("exact:dup", [{"name": "length"}, {"name": "exact_dedup"}]) == 1
    assert reason_owners(stages)["decontam"] == 2
    roles = column_roles(stages)
    assert roles["len_response_tokens"] == "score" and roles["exact_hash"] == "internal" and roles["selected"] == "flag"
    assert set(global_writes(stages[1])) == {"dup_of", "dup_kind", "dup_of_source", "dup_of_row"}
    assert "exact_hash" not in global_writes(stages[1])
