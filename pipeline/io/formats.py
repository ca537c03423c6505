"""Record formats: how one input record (a dict) maps to canonical messages.

Each format is a function ``record -> (messages, unmapped_fields)`` that raises :class:`Reject`
with a short reason when the record cannot be mapped. Detection looks at the keys of a record.
A record's ``tools`` field (tool definitions) is taken by the reader for every format
(:func:`take_tools`); the unmapped fields become user columns.

Tool calls and reasoning (see :mod:`pipeline.schema` for the stored form):

* OpenAI ``messages``: assistant ``tool_calls: [{id, type, function: {name, arguments}}]`` (also
  the legacy ``function_call: {name, arguments}``; a flat ``{name, arguments}`` call is accepted),
  ``content`` null or absent beside them; ``tool`` messages with ``tool_call_id`` and ``name``
  (the legacy ``function`` role too); ``reasoning_content`` (or ``reasoning``) on assistant turns.
* ShareGPT (LLaMA-Factory / glaive-toolcall / xLAM style): ``from: function_call`` turns whose
  ``value`` is the JSON of a call ``{name, arguments}`` (or a list of calls), ``from: observation``
  (or ``tool``) for tool results, a top-level ``tools`` JSON string. A ``function_call`` turn that
  follows a ``gpt`` turn is that assistant turn's calls (one assistant message, as in OpenAI); an
  ``id`` inside a call and ``tool_call_id`` / ``name`` keys on an observation turn are kept.
  Hermes-style ``<tool_call>`` text inside a ``gpt`` turn stays text.
* ``<think>...</think>``: an assistant turn whose content starts with a think block and has no
  reasoning field gets the block as ``reasoning`` and the rest as ``content`` (:func:`split_think`),
  unless the source sets ``reasoning: fields`` (content kept verbatim).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from pipeline.schema import ROLE_ALIASES, arguments_text, tools_text


class Reject(ValueError):
    """A record that cannot be mapped; ``str(exc)`` is the reason written to the rejects shard."""


Messages = list[dict[str, Any]]
Mapper = Callable[[dict[str, Any]], tuple[Messages, dict[str, Any]]]


def _text(rec: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    if key not in rec or rec[key] is None:
        if required:
            raise Reject(f"missing field '{key}'")
        return None
    val = rec[key]
    if not isinstance(val, str):
        raise Reject(f"field '{key}' must be a string, got {type(val).__name__}")
    return val


def _first_key(rec: dict[str, Any], keys: tuple[str, ...]) -> str:
    for k in keys:
        if rec.get(k) is not None:
            return k
    raise Reject(f"missing field '{keys[0]}'" + (f" (or {', '.join(repr(k) for k in keys[1:])})" if len(keys) > 1 else ""))


def _rest(rec: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in used}


def _content(val: Any, where: str) -> str:
    """Message content: a string, or OpenAI-style text parts joined."""
    if isinstance(val, str):
        return val
    if isinstance(val, list):
        parts = []
        for p in val:
            if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise Reject(f"{where}: unsupported content part {kind!r}")
        return "".join(parts)
    if val is None:
        raise Reject(f"{where}: missing content")
    raise Reject(f"{where}: content must be a string, got {type(val).__name__}")


def _role(val: Any, where: str) -> str:
    if not isinstance(val, str):
        raise Reject(f"{where}: role must be a string, got {type(val).__name__}")
    role = ROLE_ALIASES.get(val.strip().lower())
    if role is None:
        raise Reject(f"{where}: unknown role {val!r}")
    return role


# Text that shows nothing. A turn that is empty or only whitespace is left to the heuristics stage
# (heur_empty_response, a drop with a reason); a turn with something in it but nothing visible
# (control characters, zero-width spaces, joiners, bidi marks, lone combining marks, Hangul fillers)
# is broken data and a reject. The same sets are written twice: for Python (unicodedata) and as a
# Rust regex class for the vectorised path (pipeline.io.arrow_map); they agree up to the Unicode
# versions of the two (Python 3.11: 14.0).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
_INVISIBLE_EXTRA = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # blank letters and the blank braille cell
#: Unicode White_Space, as a regex class body both Python's re and Rust's regex read
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: the invisible characters as a Rust regex class body (Polars)
INVISIBLE_CLASS = r"\p{Cc}\p{Cf}\p{Z}\p{Mn}\p{Me}\u115f\u1160\u3164\uffa0\u2800"
_WS_ONLY = re.compile(f"[{WHITESPACE_CLASS}]*")
INVISIBLE_REASON = "{} turn holds only control or invisible characters"


def invisible_only(text: str) -> bool:
    """True for text with something other than whitespace in it but no visible character."""
    cat = unicodedata.category
    for ch in text:  # stops at the first visible character: the first, in real text
        if ch not in _INVISIBLE_EXTRA and cat(ch) not in _INVISIBLE_CATEGORIES:
            return False
    return _WS_ONLY.fullmatch(text) is None


def check_messages(messages: Messages) -> Messages:
    if not messages:
        raise Reject("empty conversation")
    if not any(m["role"] == "assistant" for m in messages):
        raise Reject("no assistant turn")
    if not any(m["role"] == "user" for m in messages):
        raise Reject("no user turn")
    for m in messages:
        c = m["content"]
        if c and "!" <= c[0] <= "~":  # starts with a visible ASCII character: most text, no call
            continue
        if invisible_only(c):
            raise Reject(INVISIBLE_REASON.format(m["role"]))
    return messages


#: role spellings the fast path of :func:`_turn` takes as they are (the aliases, except call roles,
#: in the spelling of the alias table: no case folding or stripping needed)
_PLAIN_ROLES: dict[str, str] = {k: v for k, v in ROLE_ALIASES.items() if k not in ("function_call", "tool_call")}

#: ShareGPT roles of an assistant's tool call (LLaMA-Factory ``function_call``; ``tool_call`` in some exports)
CALL_ROLES: frozenset[str] = frozenset({"function_call", "tool_call"})

#: the reasoning-trace fields of an assistant message, in order of preference
REASONING_FIELDS: tuple[str, ...] = ("reasoning_content", "reasoning")

#: how a source's reasoning is read: "auto" (fields, else a leading think block), "fields" (fields only)
REASONING_MODES: tuple[str, ...] = ("auto", "fields")
THINK_TAGS: tuple[str, str] = ("<think>", "</think>")


def think_pattern(tags: tuple[str, str] = THINK_TAGS) -> str:
    """The regex of a leading think block: group 1 the reasoning (surrounding newlines stripped, as
    Qwen3's chat template parses it), group 2 the content after it (leading newlines stripped).
    The same pattern serves Python's ``re`` and Polars (Rust ``regex``)."""
    o, c = re.escape(tags[0]), re.escape(tags[1])
    return rf"(?s)\A\s*{o}\n*(.*?)\n*{c}\n*(.*)\z"


_THINK = re.compile(think_pattern().replace(r"\z", r"\Z"))


def split_think(content: str, pattern: re.Pattern[str] | None = None) -> tuple[str | None, str]:
    """``(reasoning, content)`` of an assistant turn whose content starts with a think block, else
    ``(None, content)``. An unterminated block is left in the content."""
    m = (pattern or _THINK).match(content)
    if m is None:
        return None, content
    return m.group(1), m.group(2)


def think_regex(tags: tuple[str, str]) -> re.Pattern[str]:
    return _THINK if tuple(tags) == THINK_TAGS else re.compile(think_pattern(tags).replace(r"\z", r"\Z"))


def apply_think(messages: Messages, pattern: re.Pattern[str] | None = None) -> Messages:
    """Split leading think blocks of assistant turns that have no reasoning field (in place)."""
    for m in messages:
        if m["role"] == "assistant" and m.get("reasoning") is None and m["content"]:
            r, c = split_think(m["content"], pattern)
            if r is not None:
                m["reasoning"], m["content"] = r, c
    return messages


def _opt_str(t: dict[str, Any], key: str, where: str) -> str | None:
    v = t.get(key)
    if v is None or isinstance(v, str):
        return v
    raise Reject(f"{where}: {key} must be a string, got {type(v).__name__}")


def _call(c: Any, where: str) -> dict[str, Any]:
    """One tool call -> ``{id, type, name, arguments}``: OpenAI ``{id, type, function: {name,
    arguments}}`` or a flat ``{name, arguments}`` (ShareGPT / xLAM)."""
    if not isinstance(c, dict):
        raise Reject(f"{where}: a tool call must be an object, got {type(c).__name__}")
    fn = c.get("function") if isinstance(c.get("function"), dict) else c
    name = fn.get("name")
    if not isinstance(name, str):
        raise Reject(f"{where}: tool call without a function name")
    args = fn.get("arguments", fn.get("parameters"))
    typ = c.get("type")
    cid = c.get("id")
    return {"id": None if cid is None else str(cid), "type": typ if isinstance(typ, str) else "function",
            "name": name, "arguments": arguments_text({} if args is None else args)}


def _calls(val: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(val, str):  # ShareGPT: the JSON of a call or of a list of calls
        try:
            val = json.loads(val)
        except ValueError:
            raise Reject(f"{where}: function_call value is not JSON") from None
    if isinstance(val, dict):
        val = [val]
    if not isinstance(val, list):
        raise Reject(f"{where}: tool_calls must be a list, got {type(val).__name__}")
    return [_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(val)]


def _turn(t: dict[str, Any], rk: str, ck: str, where: str) -> dict[str, Any]:
    """One OpenAI / ShareGPT turn -> a canonical message (see the module docstring)."""
    raw_role = t.get(rk)
    if len(t) == 2 and type(raw_role) is str and type(t.get(ck)) is str:
        # the common turn, a role and a text and nothing else: the general path's answer, without
        # its checks for fields the turn does not have (reading a ShareGPT file is ~8 such turns a row)
        role = _PLAIN_ROLES.get(raw_role)
        if role is not None:
            return {"role": role, "content": t[ck]}
    if isinstance(raw_role, str) and raw_role.strip().lower() in CALL_ROLES:
        return {"role": "assistant", "content": "", "tool_calls": _calls(t.get(ck), where),
                "_call_turn": True}
    role = _role(raw_role, where)
    msg: dict[str, Any] = {"role": role}
    calls = None
    if role == "assistant":
        if t.get("tool_calls") is not None:
            calls = _calls(t["tool_calls"], where)
        elif t.get("function_call") is not None:  # OpenAI's legacy single call
            calls = _calls(t["function_call"], where)
        reasoning = None
        for k in REASONING_FIELDS:
            if t.get(k) is not None:
                reasoning = _opt_str(t, k, where)
                break
        if reasoning is not None:
            msg["reasoning"] = reasoning
        if calls:
            msg["tool_calls"] = calls
    val = t.get(ck)
    if val is None and role == "assistant" and (calls or msg.get("reasoning") is not None):
        msg["content"] = ""  # a turn that only calls tools (or only reasons)
    else:
        msg["content"] = _content(val, where)
    if role == "tool":
        tcid = t.get("tool_call_id")
        if tcid is not None:
            msg["tool_call_id"] = str(tcid)
    name = _opt_str(t, "name", where)
    if name is not None:
        msg["name"] = name
    return msg


def _turns(rec: dict[str, Any], key: str) -> tuple[Messages, set[str]]:
    turns = rec.get(key)
    if turns is None:
        raise Reject(f"missing field '{key}'")
    if not isinstance(turns, list):
        raise Reject(f"field '{key}' must be a list, got {type(turns).__name__}")
    used = {key}
    out: Messages = []
    sys_prompt = rec.get("system")
    if isinstance(sys_prompt, str) and sys_prompt.strip():
        out.append({"role": "system", "content": sys_prompt})
        used.add("system")
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise Reject(f"{where} must be an object, got {type(t).__name__}")
        rk = "from" if "from" in t else "role"
        ck = "value" if "value" in t else "content"
        msg = _turn(t, rk, ck, where)
        if msg.pop("_call_turn", False) and out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
            out[-1]["tool_calls"] = msg["tool_calls"]  # ShareGPT gpt + function_call: one assistant turn
            continue
        out.append(msg)
    return check_messages(out), used


def take_tools(rec: dict[str, Any]) -> str | None:
    """The record's tool definitions as canonical JSON text (:func:`pipeline.schema.tools_text`)."""
    try:
        return tools_text(rec.get("tools"))
    except ValueError as e:
        raise Reject(str(e)) from None


def map_sharegpt(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    msgs, used = _turns(rec, "conversations")
    return msgs, _rest(rec, used)


def map_messages(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    msgs, used = _turns(rec, "messages")
    return msgs, _rest(rec, used)


def _pair(
    rec: dict[str, Any], prompt: str, answer: str, system: str | None = None
) -> Messages:
    msgs: Messages = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": prompt})
    msgs.append({"role": "assistant", "content": answer})
    return msgs


def map_alpaca(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    instruction = _text(rec, "instruction")
    inp = _text(rec, "input", required=False)
    out_key = _first_key(rec, ("output", "response"))
    answer = _text(rec, out_key)
    system = _text(rec, "system", required=False)
    prompt = f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction
    used = {"instruction", "input", out_key, "system"}
    return check_messages(_pair(rec, prompt, answer, system)), _rest(rec, used)


def map_prompt_completion(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    prompt = _text(rec, "prompt")
    out_key = _first_key(rec, ("completion", "canonical_solution", "response"))
    answer = _text(rec, out_key)
    return check_messages(_pair(rec, prompt, answer)), _rest(rec, {"prompt", out_key})


def map_question_answer(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    question = _text(rec, "question")
    out_key = _first_key(rec, ("answer", "ground_truth"))
    answer = _text(rec, out_key)
    return check_messages(_pair(rec, question, answer)), _rest(rec, {"question", out_key})


def map_self_instruct(rec: dict[str, Any]) -> tuple[Messages, dict[str, Any]]:
    """Self-Instruct tasks: the instruction plus its first instance; all instances stay in ``meta``."""
    instruction = _text(rec, "instruction")
    inst = rec.get("instances")
    if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
        raise Reject("field 'instances' must be a non-empty list of objects")
    inp = _text(inst[0], "input", required=False)
    answer = _text(inst[0], "output")
    prompt = f"{instruction}\n\n{inp}" if inp and inp.strip() else instruction
    return check_messages(_pair(rec, prompt, answer)), _rest(rec, {"instruction"})


FORMATS: dict[str, Mapper] = {
    "sharegpt": map_sharegpt,
    "messages": map_messages,
    "alpaca": map_alpaca,
    "prompt_completion": map_prompt_completion,
    "question_answer": map_question_answer,
    "self_instruct": map_self_instruct,
}

FORMAT_HELP: dict[str, str] = {
    "sharegpt": "conversations: [{from|role, value|content}], roles human/gpt/chatgpt/bing/bard/user/assistant/system/"
                "tool/observation/function_call (LLaMA-Factory tool calls: value = JSON {name, arguments}); optional system, tools",
    "messages": "messages: [{role, content}] (OpenAI style; content may be a list of text parts; assistant tool_calls "
                "and reasoning_content, tool messages with tool_call_id/name); optional system, tools (JSON list)",
    "alpaca": "instruction, optional input, output or response; optional system",
    "prompt_completion": "prompt, completion (or canonical_solution as in HumanEval, or response)",
    "question_answer": "question, answer (or ground_truth), as in GSM8K",
    "self_instruct": "instruction, instances: [{input, output}] (first instance is used)",
}


def detect_format(rec: Any) -> str | None:
    """Guess the format from one record's keys; None when nothing fits."""
    if not isinstance(rec, dict):
        return None
    keys = set(rec)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "instances" in keys:
        return "self_instruct"
    if "instruction" in keys and keys & {"output", "response"}:
        return "alpaca"
    if "prompt" in keys and keys & {"completion", "canonical_solution", "response"}:
        return "prompt_completion"
    if "question" in keys and keys & {"answer", "ground_truth"}:
        return "question_answer"
    return None
