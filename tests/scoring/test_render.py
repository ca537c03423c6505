"""Scoring render of tool calls, tool messages, tool definitions and reasoning.

Templates: the ChatML fallback, and real tool-aware chat templates as TRL ships them (Qwen3,
Llama 3.1); the real SmolLM2 for a perplexity with and without reasoning.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.io.readers import read_table
from pipeline.scoring.render import ChatRenderer, turn_responses

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "sample" / "tool_calls"


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    r, _ = read_table(str(SAMPLES / "openai_tools.jsonl"))
    return r


def _trl_template(name: str) -> str:
    trl = pytest.importorskip("trl")
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def test_plain_turns_render_as_before(rows: pl.DataFrame) -> None:
    """A role/content conversation gives exactly the pre-tool-call ChatML pairs."""
    msgs = rows["messages"][5].to_list()
    r = ChatRenderer(None)
    (t, ctx, y), = r.turn_pairs(msgs)
    assert ctx == f"<|im_start|>user\n{msgs[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert y == msgs[1]["content"] + "<|im_end|>" and r.fallbacks == 0


def test_chatml_targets_hold_calls_and_reasoning(rows: pl.DataFrame) -> None:
    call_row, think_row = rows["messages"][0].to_list(), rows["messages"][3].to_list()
    with_r, without = ChatRenderer(None), ChatRenderer(None, include_reasoning=False)
    (_, _, y0), (_, ctx1, y1) = with_r.turn_pairs(call_row, tools=rows["tools"][0])
    assert y0 == ('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}'
                  "\n</tool_call><|im_end|>")
    assert "<|im_start|>tool\n" in ctx1 and y1.endswith("<|im_end|>")
    (_, _, yr), = with_r.turn_pairs(think_row)
    (_, _, yn), = without.turn_pairs(think_row)
    reasoning, answer = think_row[1]["reasoning"], think_row[1]["content"]
    assert yr == f"<think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>"
    assert yn == f"{answer}<|im_end|>"  # include_reasoning=False: scored without the trace
    assert turn_responses(call_row)[0] == 'get_weather({"location":"Paris, France","unit":"celsius"})'


@pytest.mark.parametrize(("name", "row"), [("qwen3.jinja", 1), ("llama3_1.jinja", 0)])  # Llama 3.1: one call a turn
def test_tool_aware_templates_see_calls_results_and_tools(rows: pl.DataFrame, name: str, row: int) -> None:
    tpl = _trl_template(name)
    msgs, tools = rows["messages"][row].to_list(), rows["tools"][row]
    r = ChatRenderer(tpl, eos_token="<|im_end|>")
    pairs = r.turn_pairs(msgs, tools=tools)
    assert r.fallbacks == 0 and len(pairs) == 2
    (_, ctx0, y0), (_, ctx1, y1) = pairs
    assert "search_flights" in ctx0  # the tool definitions are in the prompt
    calls = next(m["tool_calls"] for m in msgs if m.get("tool_calls"))
    assert all(c["name"] in y0 for c in calls) and all(json.loads(c["arguments"])["location"] in y0 for c in calls
                                                        if "location" in c["arguments"])
    result = next(m["content"] for m in msgs if m["role"] == "tool")
    assert json.loads(result)["conditions"] in ctx1  # tool results are context of the next turn
    assert msgs[-1]["content"] in y1 and msgs[-1]["content"] not in ctx1


def test_qwen3_reasoning_in_or_out(rows: pl.DataFrame) -> None:
    tpl = _trl_template("qwen3.jinja")
    msgs = rows["messages"][2].to_list()
    (_, _, y), = ChatRenderer(tpl, eos_token="<|im_end|>").turn_pairs(msgs)
    (_, _, n), = ChatRenderer(tpl, eos_token="<|im_end|>", include_reasoning=False).turn_pairs(msgs)
    assert msgs[1]["reasoning"] in y and msgs[1]["reasoning"] not in n
    assert y.endswith(msgs[1]["content"] + "<|im_end|>") and n.endswith(msgs[1]["content"] + "<|im_end|>")


def test_perplexity_with_and_without_reasoning(smol, rows: pl.DataFrame, tmp_path: Path, max_tokens: int) -> None:
    """The real model (whose template does not show reasoning_content: it is inlined as a think
    block) scores the reasoning trace with the answer, or the answer alone."""
    from pipeline.scoring.stages import Perplexity
    from pipeline.stages.base import RunContext

    table = rows[2:4]
    ctx = RunContext(cache_dir=tmp_path)
    on = Perplexity(max_tokens=max_tokens)(table, ctx)
    off = Perplexity(max_tokens=max_tokens, include_reasoning=False)(table, ctx)
    assert on["ppl"].is_finite().all() and off["ppl"].is_finite().all()
    assert on["ppl_template"][0] != off["ppl_template"][0]  # separate cache entries
    assert (on["ppl"] != off["ppl"]).all()
    # a default config keeps its template hash (caches of existing runs stay valid)
    assert "include_reasoning" not in json.dumps(Perplexity().pass_spec())
