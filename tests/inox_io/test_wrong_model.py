r"""Loading into the wrong model: other shapes, dtypes, missing or extra parameters,
other ties. The error must name every differing path, each once, and nothing else."""

from __future__ import annotations

import re

from pathlib import Path
from typing import Dict

import jax
import jax.numpy as jnp
import pytest

import inox.nn as nn
import inox_io

FORMATS = ["safetensors", "msgpack"]


def model(
    *,
    w=(3, 4),
    c=(5,),
    d_dtype=jnp.int32,
    e_dtype=jnp.float32,
    tie: str | None = "b",
    extra=(),
    drop=(),
) -> nn.Scope:
    r"""A scope whose ``a`` is tied to :py:`tie` (``'b'``, ``'f'`` or None), with
    parameters :py:`extra` added and :py:`drop` removed."""

    shared = nn.Parameter(jnp.ones(w))
    fields = {
        "a": nn.Reference("w", shared),
        "b": nn.Parameter(jnp.ones(w)),
        "c": nn.Parameter(jnp.zeros(c)),
        "d": nn.Parameter(jnp.zeros((2, 2), d_dtype)),
        "e": nn.Parameter(jnp.zeros(3, e_dtype)),
        "f": nn.Parameter(jnp.ones(w)),
        "key": jax.random.key(0),
    }
    if tie:
        fields[tie] = nn.Reference("w", shared)
    for name in extra:
        fields[name] = nn.Parameter(jnp.zeros(2))
    for name in drop:
        del fields[name]
    return nn.Scope(**fields)


@pytest.fixture(params=FORMATS)
def saved(request, tmp_path) -> Path:
    path = tmp_path / f"model.{request.param}"
    inox_io.save(path, model())
    return path


def problems(error: inox_io.CheckpointError) -> Dict[str, str]:
    r"""The paths an error names, each with its line; fails on a path named twice."""

    lines = error.message.split("\n")
    assert lines[0] == "does not fit like:", error.message
    out = {}
    for line in lines[1:]:
        path, what = line.strip().split(": ", 1)
        assert path not in out, f"{path} named twice:\n{error.message}"
        out[path] = what
    return out


def mismatch(path: Path, like) -> Dict[str, str]:
    with pytest.raises(inox_io.CheckpointError) as info:
        inox_io.load(path, like)
    assert str(path) in str(info.value)
    return problems(info.value)


def test_the_right_model_loads(saved):
    restored = inox_io.load(saved, model())
    assert restored.a is restored.b


def test_every_shape_difference_is_named(saved):
    found = mismatch(saved, model(w=(4, 4), c=(6,)))
    assert found == {
        ".a.value.value": "float32[4, 4] expected, float32[3, 4] found",
        ".c.value": "float32[6] expected, float32[5] found",
        ".f.value": "float32[4, 4] expected, float32[3, 4] found",
    }


def test_every_dtype_difference_is_named(saved):
    found = mismatch(saved, model(d_dtype=jnp.float32, e_dtype=jnp.bfloat16))
    assert found == {
        ".d.value": "float32[2, 2] expected, int32[2, 2] found",
        ".e.value": "bfloat16[3] expected, float32[3] found",
    }


def test_a_key_where_an_array_was_saved_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    inox_io.save(path, {"key": jnp.zeros(()), "w": jnp.zeros(2)})
    found = mismatch(path, {"key": jax.random.key(0), "w": jnp.zeros(3)})
    assert set(found) == {"['key']", "['w']"}
    assert "key<fry>[] expected, float32[] found" in found["['key']"]


def test_every_missing_parameter_is_named(saved):
    found = mismatch(saved, model(extra=("g", "h")))
    assert found == {".g.value": "missing from the file", ".h.value": "missing from the file"}


def test_every_extra_parameter_is_named(saved):
    found = mismatch(saved, model(drop=("c", "e")))
    assert found == {".c.value": "in the file but not in like", ".e.value": "in the file but not in like"}


def test_a_tie_the_like_lacks_is_named(saved):
    found = mismatch(saved, model(tie=None))
    assert found[".a"] == "tied to nothing in like, to ['.b'] in the file"
    assert set(found) == {".a", ".b.value"}  # .b is an array of its own in like


def test_a_tie_the_file_lacks_is_named(tmp_path):
    path = tmp_path / "model.msgpack"
    inox_io.save(path, model(tie=None))
    found = mismatch(path, model())
    assert found[".a"] == "tied to ['.b'] in like, to nothing in the file"
    assert set(found) == {".a", ".b.value"}


def test_a_tie_to_another_parameter_is_named(saved):
    found = mismatch(saved, model(tie="f"))
    assert found[".a"] == "tied to ['.f'] in like, to ['.b'] in the file"
    assert set(found) == {".a", ".b.value", ".f.value"}


def test_all_differences_at_once(saved):
    like = model(w=(4, 4), d_dtype=jnp.float32, tie="f", extra=("g",), drop=("c",))
    found = mismatch(saved, like)
    assert set(found) == {".a", ".a.value.value", ".b.value", ".c.value", ".d.value", ".f.value", ".g.value"}


def test_abstract_like_is_checked_the_same(saved):
    like = inox_io.abstract(lambda: model(w=(4, 4), c=(6,)))
    assert set(mismatch(saved, like)) == {".a.value.value", ".c.value", ".f.value"}


def test_not_strict_warns_with_every_path_and_loads_the_rest(saved):
    like = model(c=(6,), extra=("g",), drop=("e",))
    with pytest.warns(UserWarning) as record:
        restored = inox_io.load(saved, like, strict=False)
    message = str(record[0].message)
    for path in (".c.value", ".g.value", ".e.value"):
        assert re.search(re.escape(path) + ": ", message), f"{path} not in {message}"
    assert restored.c.value.shape == (6,)  # kept from like
    assert restored.a is restored.b and restored.a.value.value.shape == (3, 4)  # loaded
