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
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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
                 include_eos: bool = True) -> None:
        self.chat_template = chat_template or CHATML
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.include_eos = include_eos
        self._tpl = _compile(self.chat_template)
        self._fallback = _compile(CHATML) if chat_template else self._tpl
        self.fallbacks = 0
        markers = (*EOT_MARKERS, self.eos_token) if self.eos_token else EOT_MARKERS
        self._eot = tuple(sorted(set(markers), key=len, reverse=True))

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        msgs = [{"role": m["role"], "content": m["content"] or ""} for m in messages]
        kw = {"messages": msgs, "add_generation_prompt": add_generation_prompt,
              "bos_token": self.bos_token, "eos_token": self.eos_token}
        try:
            return self._tpl.render(**kw)
        except Exception:  # noqa: BLE001 - any template failure falls back to ChatML, counted
            self.fallbacks += 1
            return self._fallback.render(**kw)

    def _split(self, before: Messages) -> tuple[str, str]:
        """(context, end-of-turn marker) for an assistant turn following ``before``."""
        text = self.render([*before, {"role": "assistant", "content": SENTINEL}])
        i = text.find(SENTINEL)
        if i < 0:  # the template dropped the content: condition on the generation prompt instead
            self.fallbacks += 1
            return self.render(before, add_generation_prompt=True), self.eos_token
        suffix = text[i + len(SENTINEL):]
        eot = next((m for m in self._eot if suffix.startswith(m)), "")
        return text[:i], eot

    def turn_pairs(self, messages: Messages, only: Collection[int] | None = None) -> list[tuple[int, str, str]]:
        """``(turn, context, target)`` for every assistant turn (or the turns in ``only``), numbered from 0."""
        idx = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        out = []
        for t, k in enumerate(idx):
            if only is not None and t not in only:
                continue
            ctx, eot = self._split(messages[:k])
            out.append((t, ctx, (messages[k]["content"] or "") + (eot if self.include_eos else "")))
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
    return [m["content"] or "" for m in messages if m["role"] == "assistant"]
