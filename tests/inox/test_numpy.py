r"""inox.numpy: flatten, unflatten and vectorize, as in the original inox."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inox.numpy import flatten, unflatten, vectorize

X = jnp.arange(30.0).reshape(2, 3, 5)


def test_flatten():
    assert flatten(X).shape == (30,)
    assert flatten(X, 1).shape == (2, 15)
    assert flatten(X, 0, 2).shape == (6, 5)
    assert flatten(X, -2).shape == (2, 15)
    assert flatten(X, 0, -1).shape == (6, 5)
    assert jnp.array_equal(flatten(X, 1), X.reshape(2, 15))


def test_unflatten():
    assert unflatten(X, 1, (3, 1)).shape == (2, 3, 1, 5)
    assert unflatten(X, -1, (5, 1)).shape == (2, 3, 5, 1)
    assert unflatten(flatten(X, 0, 2), 0, (2, -1)).shape == (2, 3, 5)
    assert jnp.array_equal(unflatten(flatten(X, 1), 1, (3, 5)), X)


def test_vectorize_broadcasts_batch_axes():
    mvp = vectorize(jnp.dot, (2, 1))
    A = jax.random.normal(jax.random.key(0), (4, 1, 5, 3))
    x = jax.random.normal(jax.random.key(1), (7, 3))
    y = mvp(A, x)
    assert y.shape == (4, 7, 5)
    np.testing.assert_allclose(y, np.einsum("aij,bj->abi", np.asarray(A[:, 0]), np.asarray(x)), rtol=1e-5, atol=1e-5)

    add = vectorize(lambda a, b: a + b, 1)
    assert add(jnp.ones((4, 2)), jnp.ones((3, 1, 2))).shape == (3, 4, 2)
    assert vectorize(lambda a: a * 2, 0)(jnp.ones((4, 2))).shape == (4, 2)


def test_vectorize_exclude_and_keywords():
    calls = []

    def f(a, s, b, axis):
        calls.append(type(s))
        return (a * s + b).sum(axis)

    g = vectorize(f, 1, exclude=[1])
    assert g(jnp.ones((4, 2)), 3.0, jnp.ones(2), axis=0).shape == (4,)
    assert calls == [float]  # passed as it is, not mapped nor converted


def test_vectorize_refuses_bad_core_counts():
    # The original asserts: code that catches AssertionError still does.
    with pytest.raises(AssertionError):
        vectorize(jnp.dot, (2, 1))(jnp.ones(3), jnp.ones(3))
    with pytest.raises(AssertionError):
        vectorize(jnp.dot, (2, 1, 1))(jnp.ones((3, 3)), jnp.ones(3))
