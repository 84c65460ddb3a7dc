"""Doctest setup for ``python -m pytest --doctest-modules jaxlora``: the names examples use, and a scratch folder.

Every docstring example may use ``jax``, ``jnp``, ``np``, ``os`` and ``jaxlora`` without importing them, and runs in
a fresh temporary working directory, so examples that write files (``save_adapter("run/adapter", ...)``) leave
nothing behind. The test suite's own setup is tests/conftest.py.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_setup(request):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlora

    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(jax=jax, jnp=jnp, np=np, os=os, jaxlora=jaxlora)
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    yield
