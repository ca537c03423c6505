"""Evaluation targets: reference responses scored by per-token NLL, and GSM8K questions scored by exact match.

A target is any file the project's readers accept (:func:`pipeline.io.readers.read_table`: JSONL,
JSON, Parquet, any record format, optionally gzip). Each usable row becomes one item: the
conversation up to its last assistant turn is the prompt, that turn is the reference response. Rows
the readers reject and rows without an assistant turn are not items; a file with no item at all is
an error (:class:`EvaluationError`) raised before any training.

Built-in names resolve to the slices bundled under ``data/`` (see ``data/README.md``):

* ``gsm8k``: GSM8K test solutions (``data/sample/benchmarks/gsm8k_test.jsonl.gz``),
* ``alpaca_eval``: AlpacaEval reference outputs (``data/eval/alpaca_eval_reference.jsonl.gz``),
* ``humaneval``: HumanEval canonical solutions (``data/sample/benchmarks/humaneval.jsonl.gz``).

Exact-match accuracy (:class:`AccuracyTarget`) needs a gold answer: GSM8K's ``#### N`` line, or the
last number of the reference. Items are the first ``n`` usable rows, in file order, so every arm
and every run sees the same items.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.evaluate.errors import EvaluationError

REPO = Path(__file__).resolve().parents[2]

#: built-in target name -> path relative to the repository root
BUILTIN_TARGETS: dict[str, str] = {
    "gsm8k": "data/sample/benchmarks/gsm8k_test.jsonl.gz",
    "alpaca_eval": "data/eval/alpaca_eval_reference.jsonl.gz",
    "humaneval": "data/sample/benchmarks/humaneval.jsonl.gz",
}

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Target:
    """A loss target: ``prompts[i]`` (messages) and ``references[i]`` (the assistant text) per item."""

    name: str
    path: str
    prompts: list[list[dict[str, str]]]
    references: list[str]
    ids: list[str]
    sha256: str
    rows_read: int
    rows_unusable: int
    kind: str = "nll"

    def __len__(self) -> int:
        return len(self.references)


@dataclass
class AccuracyTarget:
    """Exact-match target: a question (messages) and a normalised gold answer per item."""

    name: str
    path: str
    prompts: list[list[dict[str, str]]]
    answers: list[str]
    ids: list[str]
    sha256: str
    kind: str = field(default="accuracy")

    def __len__(self) -> int:
        return len(self.answers)


def resolve_target(spec: str) -> tuple[str, Path]:
    """``(name, path)`` of a built-in name, ``name=path``, or a plain path (named after the file)."""
    if spec in BUILTIN_TARGETS:
        path = REPO / BUILTIN_TARGETS[spec]
        if not path.exists():
            raise EvaluationError(f"built-in target {spec!r} needs {path}, which is missing from this installation")
        return spec, path
    return named_path(spec, f"target {spec!r}", f" (built-in targets: {', '.join(BUILTIN_TARGETS)})")


def named_path(spec: str, what: str, hint: str = "") -> tuple[str, Path]:
    """``name=path`` or ``path`` -> (name, existing path); the name defaults to the file name's stem."""
    name, sep, p = spec.partition("=")
    if not sep:
        name, p = "", spec
    path = Path(p).expanduser()
    if not path.exists():
        raise EvaluationError(f"{what}: file {path} not found{hint}")
    return name or path.name.split(".")[0], path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _items(name: str, path: Path) -> tuple[list[list[dict[str, str]]], list[str], list[str], int, int]:
    from pipeline.io.readers import read_table

    try:
        rows, rejects = read_table(str(path))
    except Exception as e:  # a file the readers cannot open at all
        raise EvaluationError(f"target {name!r} ({path}): cannot read: {e}") from e
    prompts, refs, ids = [], [], []
    for rid, msgs in zip(rows["id"].to_list(), rows["messages"].to_list(), strict=True):
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last < 1 or not msgs[last]["content"].strip():
            continue
        prompts.append([{"role": m["role"], "content": m["content"]} for m in msgs[:last]])
        refs.append(msgs[last]["content"])
        ids.append(rid)
    read = rows.height + rejects.height
    return prompts, refs, ids, read, read - len(refs)


def load_target(spec: str, n_items: int | None) -> Target:
    """Load a loss target; the first ``n_items`` usable rows (all when None)."""
    name, path = resolve_target(spec)
    prompts, refs, ids, read, bad = _items(name, path)
    if not refs:
        raise EvaluationError(f"target {name!r} ({path}) has no usable rows: {read} read, none with a prompt "
                              "and a non-empty assistant response")
    k = len(refs) if n_items is None else n_items
    return Target(name=name, path=str(path), prompts=prompts[:k], references=refs[:k], ids=ids[:k],
                  sha256=file_sha256(path), rows_read=read, rows_unusable=bad)


def gold_answer(reference: str) -> str | None:
    """The gold answer of a reference: the text after GSM8K's ``####``, else its last number; normalised."""
    if "####" in reference:
        return normalize_answer(reference.rsplit("####", 1)[1])
    nums = _NUM.findall(reference)
    return normalize_answer(nums[-1]) if nums else None


def normalize_answer(text: str) -> str | None:
    """The number in ``text`` without thousands separators or trailing ``.0``; None when there is none."""
    nums = _NUM.findall(text)
    if not nums:
        return None
    s = nums[0].replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def predicted_answer(generation: str) -> str | None:
    """What a generation answers: the number after its last ``####``, else its last number."""
    if "####" in generation:
        got = normalize_answer(generation.rsplit("####", 1)[1])
        if got is not None:
            return got
    nums = _NUM.findall(generation)
    return normalize_answer(nums[-1]) if nums else None


def load_accuracy_target(spec: str, n_items: int) -> AccuracyTarget:
    """The first ``n_items`` rows of ``spec`` whose reference has a numeric gold answer."""
    name, path = resolve_target(spec)
    prompts, refs, ids, read, _ = _items(name, path)
    keep = [(p, g, i) for p, r, i in zip(prompts, refs, ids, strict=True) if (g := gold_answer(r)) is not None]
    if not keep:
        raise EvaluationError(f"accuracy target {name!r} ({path}) has no usable rows: {read} read, none with "
                              "a numeric gold answer (GSM8K '#### N' or a number in the reference)")
    keep = keep[:n_items]
    return AccuracyTarget(name=f"{name}_em", path=str(path), prompts=[k[0] for k in keep],
                          answers=[k[1] for k in keep], ids=[k[2] for k in keep], sha256=file_sha256(path))
