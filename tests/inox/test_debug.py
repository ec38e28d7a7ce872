r"""inox.debug.same_trace (the original's tests/test_debug.py, and more traces)."""

from functools import partial

import jax
import jax.numpy as jnp

from inox.debug import same_trace


def test_same_trace():
    x, y = jnp.zeros(1), jnp.ones(1)
    assert same_trace(x, y)
    assert jax.jit(same_trace)(x, y)
    assert not jax.jit(partial(same_trace, x))(y)


def test_nested_and_differentiated_traces():
    assert not jax.jit(lambda a: jax.jit(lambda b: jnp.asarray(same_trace(a, b)))(a))(1.0)
    # Under grad, a tracer and a concrete value differ unless primals are compared.
    y = jnp.ones(())
    assert jax.grad(lambda a: same_trace(a, y) * a)(1.0) == 0.0
    assert jax.grad(lambda a: same_trace(a, y, ignore_primal=True) * a)(1.0) == 1.0
    assert not jax.vmap(lambda a: jnp.asarray(same_trace(a, y)))(jnp.ones(2)).any()
