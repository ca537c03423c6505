"""Turning conversations into (context, target) pairs with the scoring model's chat template.

The template comes from the backend (``info()["chat_template"]``: the tokenizer's template, which
for a GGUF file is read from its metadata), so the pipeline renders without loading a tokenizer.
It is rendered with Jinja2 the way transformers does (sandboxed, ``trim_blocks``/``lstrip_blocks``,
``raise_exception``), falling back to ChatML when the model has no template or the template
rejects a conversation (e.g. roles that do not alternate); fallbacks are counted.

Context and target of assistant turn *t* (:meth:`ChatRenderer.turn_pairs`): the conversation up to
turn *t* is rendered with a sentinel as turn *t*'s content; the text before the sentinel is the
context (all earlier messages plus the assistant header, exactly as the model would see them when
generating), and the target is the turn's content followed by the template's end-of-turn marker
(``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...), which SFT trains on too; ``include_eos=False``
scores the content alone. The unconditional context used by IFD (:meth:`ChatRenderer.uncond_context`)
is the same rendering with no earlier message: the template's default system prompt, if any, and
the assistant header.

Tool calls and reasoning: messages reach the template in the OpenAI / transformers layout
(:func:`template_message`: ``tool_calls: [{id, type, function: {name, arguments}}]`` with the
arguments as an object where they are a JSON object, ``tool_call_id`` / ``name`` on tool messages,
``reasoning_content`` on assistant turns when ``include_reasoning``), and the conversation's
``tools`` as the template's ``tools`` variable, so a tool-aware template (Qwen, Llama 3.1, Hermes)
renders them as the model was trained to see them. The ChatML fallback renders reasoning as a
``<think>`` block and calls as Hermes/Qwen ``<tool_call>`` blocks; a template that does not show
``reasoning_content`` gets the reasoning inline as a ``<think>`` block of the content, so
``include_reasoning`` means the same with every template. The target of an assistant turn
that calls tools or (with ``include_reasoning``) has a reasoning trace is everything the template
puts between the generation prompt and the end of that turn: reasoning, content and calls, as the
model generates them (:meth:`ChatRenderer.turn_pairs`); ``include_reasoning=False`` scores the turn
without its reasoning (neither in the target nor in earlier turns of the context). A plain turn is
rendered exactly as before those fields existed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

Messages = Sequence[dict[str, Any]]

SENTINEL = "\u2063SFTCURATE\u2063TARGET\u2063"

#: end-of-turn markers that follow an assistant turn's content in common templates
EOT_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                "</s>", "<|END_OF_TURN_TOKEN|>", "<|end_of_text|>")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message.get('reasoning_content') is string %}{{ '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' }}{% endif %}"
    "{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}{{ ('\n' if message['content'] or not loop.first else '') + "
    "'<tool_call>\n' + ({'name': call['function']['name'], "
    "'arguments': call['function']['arguments']} | tojson) + '\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _arguments(text: str | None) -> Any:
    """Arguments as templates expect them: the JSON object they encode, else the text."""
    if text is None:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    return obj if isinstance(obj, dict) else text


def template_message(m: dict[str, Any], include_reasoning: bool = True) -> dict[str, Any]:
    """A canonical message in the layout chat templates read (OpenAI / transformers)."""
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c.get("id"), "type": c.get("type") or "function",
                              "function": {"name": c.get("name"), "arguments": _arguments(c.get("arguments"))}}
                             for c in m["tool_calls"]]
    for k in ("tool_call_id", "name"):
        if m.get(k) is not None:
            out[k] = m[k]
    if include_reasoning and m.get("reasoning") is not None:
        out["reasoning_content"] = m["reasoning"]
    return out


def turn_text(m: dict[str, Any]) -> str:
    """A message's text as :func:`pipeline.text.turn_text_expr` defines it: content, then one
    ``name(arguments)`` line per tool call."""
    content = m.get("content") or ""
    calls = "\n".join(f"{c.get('name') or ''}({c.get('arguments') or ''})" for c in m.get("tool_calls") or ())
    if not calls:
        return content
    return calls if not content else f"{content}\n{calls}"


def _raise(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile(template: str) -> Any:
    from jinja2 import ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatRenderer:
    """Renders conversations with one chat template (see module docstring)."""

    def __init__(self, chat_template: str | None, bos_token: str | None = None, eos_token: str | None = None,
                 include_eos: bool = True, include_reasoning: bool = True) -> None:
        """``include_eos``: the end-of-turn marker is part of each target; ``include_reasoning``:
        assistant reasoning traces are rendered (in targets and contexts), else left out."""
        self.chat_template = chat_template or CHATML
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.include_eos = include_eos
        self.include_reasoning = include_reasoning
        self._tpl = _compile(self.chat_template)
        self._fallback = _compile(CHATML) if chat_template else self._tpl
        self.fallbacks = 0
        markers = (*EOT_MARKERS, self.eos_token) if self.eos_token else EOT_MARKERS
        self._eot = tuple(sorted(set(markers), key=len, reverse=True))

    def render(self, messages: Messages, add_generation_prompt: bool = False, tools: Any = None) -> str:
        """``messages`` (canonical or role/content dicts) through the template; ``tools``: the
        conversation's tool definitions (a list, or the canonical JSON text)."""
        msgs = [template_message(m, self.include_reasoning) for m in messages]
        kw: dict[str, Any] = {"messages": msgs, "add_generation_prompt": add_generation_prompt,
                              "bos_token": self.bos_token, "eos_token": self.eos_token}
        if tools:
            kw["tools"] = json.loads(tools) if isinstance(tools, str) else tools
        try:
            return self._tpl.render(**kw)
        except Exception:  # noqa: BLE001 - any template failure falls back to ChatML, counted
            self.fallbacks += 1
            return self._fallback.render(**kw)

    def _split(self, before: Messages, tools: Any = None) -> tuple[str, str]:
        """(context, end-of-turn marker) for an assistant turn following ``before``."""
        text = self.render([*before, {"role": "assistant", "content": SENTINEL}], tools=tools)
        i = text.find(SENTINEL)
        if i < 0:  # the template dropped the content: condition on the generation prompt instead
            self.fallbacks += 1
            return self.render(before, add_generation_prompt=True, tools=tools), self.eos_token
        suffix = text[i + len(SENTINEL):]
        eot = next((m for m in self._eot if suffix.startswith(m)), "")
        return text[:i], eot

    def _rich(self, m: dict[str, Any]) -> bool:
        """Whether an assistant turn's target is more than its content (tool calls, shown reasoning)."""
        return bool(m.get("tool_calls")) or (self.include_reasoning and m.get("reasoning") is not None)

    def _rich_pair(self, before: Messages, turn: dict[str, Any], tools: Any) -> tuple[str, str] | None:
        """(context, target) of a turn with tool calls / reasoning: the generation prompt after
        ``before``, and what the template renders after it for ``turn``, up to its end-of-turn marker.
        None when the full rendering does not extend the prompt (the template rewrites earlier turns)."""
        ctx = self.render(before, add_generation_prompt=True, tools=tools)
        full = self.render([*before, turn], tools=tools)
        if not full.startswith(ctx):
            return None
        rest = full[len(ctx):]
        r = turn.get("reasoning") if self.include_reasoning else None
        if r and r not in rest:  # a template that does not show reasoning: inline it as a think block
            inline = {**turn, "reasoning": None, "content": f"<think>\n{r}\n</think>\n\n{turn.get('content') or ''}"}
            full = self.render([*before, inline], tools=tools)
            if not full.startswith(ctx):
                return None
            rest = full[len(ctx):]
        cut = max(((rest.rfind(mk), mk) for mk in self._eot if mk and mk in rest), default=(-1, ""))
        if cut[0] < 0:
            return ctx, rest.rstrip("\n")
        return ctx, rest[: cut[0]] + (cut[1] if self.include_eos else "")

    def turn_pairs(self, messages: Messages, only: Collection[int] | None = None,
                   tools: Any = None) -> list[tuple[int, str, str]]:
        """``(turn, context, target)`` for every assistant turn (or the turns in ``only``), numbered from 0.

        ``tools``: the conversation's tool definitions, rendered by the template where it shows them."""
        idx = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        out = []
        for t, k in enumerate(idx):
            if only is not None and t not in only:
                continue
            turn = messages[k]
            if self._rich(turn):
                pair = self._rich_pair(messages[:k], turn, tools)
                if pair is not None:
                    out.append((t, *pair))
                    continue
                self.fallbacks += 1
            ctx, eot = self._split(messages[:k], tools)
            out.append((t, ctx, turn_text(turn) + (eot if self.include_eos else "")))
        return out

    def uncond_context(self) -> str:
        """The context of an assistant turn with nothing before it (IFD's unconditional pass)."""
        return self._split([])[0]

    def prompt(self, text: str, fmt: str = "chat") -> str:
        """A rating prompt as the model sees it: a user turn plus the assistant header, or raw text."""
        if fmt == "raw":
            return self.bos_token + text
        return self.render([{"role": "user", "content": text}], add_generation_prompt=True)


_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: str) -> str:
    """Substitute ``{name}`` fields in one pass (braces inside the values are left alone)."""
    return _FIELD.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def turn_instructions(messages: Messages) -> list[str]:
    """Per assistant turn, the user messages since the previous assistant turn (Deita's per-turn instruction)."""
    out, buf = [], []
    for m in messages:
        if m["role"] == "assistant":
            out.append("\n\n".join(buf))
            buf = []
        elif m["role"] == "user":
            buf.append(m["content"] or "")
    return out


def turn_responses(messages: Messages) -> list[str]:
    """Per assistant turn, its text: content plus tool calls (:func:`turn_text`), reasoning left out."""
    return [turn_text(m) for m in messages if m["role"] == "assistant"]
