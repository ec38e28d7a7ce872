import os

# Several tests shard arrays over 8 CPU devices; this must happen before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import inox
    import inox.nn as nn
    import inox_io

    doctest_namespace.update(jax=jax, jnp=jnp, jtu=jtu, np=np, inox=inox, nn=nn, inox_io=inox_io)
