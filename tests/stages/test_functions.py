"""Every stage is a function in ``pipeline.stages`` under its config name, with its params in the
signature and the docstring (generated from the pydantic params)."""

from __future__ import annotations

import inspect
import pydoc

import pytest

import pipeline.stages as stages
from pipeline.stages import REGISTRY, get_stage


@pytest.mark.parametrize("name", list(REGISTRY))
def test_config_name_is_the_function(name: str) -> None:
    fn = getattr(stages, name)
    assert fn.__name__ == name and fn.stage_class is get_stage(name)
    exec(f"from pipeline.stages import {name}", {})  # the import a user writes
    sig = inspect.signature(fn)
    params = get_stage(name).Params.model_fields
    for field, info in params.items():
        p = sig.parameters[field]
        assert info.description, f"{name}.{field} has no description"
        if info.is_required():
            assert p.default is inspect.Parameter.empty, field
        else:
            assert p.default == info.get_default(call_default_factory=True), field
    assert list(sig.parameters)[0] == "table" and "ctx" in sig.parameters
    text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
    assert "**params" not in text
    for field, info in params.items():
        assert f"{field} : " in text, field
        assert info.description.split()[0] in text, field


def test_help_of_length_lists_params_with_defaults_and_meaning() -> None:
    from pipeline.stages import length

    text = pydoc.render_doc(length, renderer=pydoc.plaintext)
    assert "min_response_tokens : int | None, default 1" in text
    assert "drop rows whose assistant turns have fewer tokens in all" in text
    assert "length(table: Any, *, tokenizer: str = 'words', min_response_tokens: int | None = 1" in text


def test_positional_params_kept_and_unknown_params_fail() -> None:
    from pipeline.select import kmq, top_k

    assert list(inspect.signature(kmq).parameters)[:4] == ["table", "budget", "score", "k"]
    assert list(inspect.signature(top_k).parameters)[:3] == ["table", "budget", "column"]
    with pytest.raises(TypeError, match="min_response_token"):
        stages.length([], min_response_token=3)
    with pytest.raises(AttributeError, match="no attribute 'lenght'"):
        stages.lenght  # noqa: B018
    assert set(REGISTRY) <= set(dir(stages))
