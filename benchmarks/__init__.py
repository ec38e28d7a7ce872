r"""Benchmarks of inox_io against the physical baseline and other checkpoint libraries.

Run from the repository root:

.. code-block:: bash

    python -m benchmarks.run                 # full run (a few minutes)
    python -m benchmarks.run --quick         # smaller smoke variant (under a minute)
    python -m benchmarks.run --cases a,c     # some cases only

See ``docs/performance.md`` for what is measured, the targets, and the last results.
"""
