"""The test run's own set-up (tests/conftest.py): one JAX compilation cache shared by the whole run."""
import os

import pytest


def test_the_run_shares_one_compilation_cache():
    if os.environ.get("LRA_TEST_JAX_CACHE") == "0":
        pytest.skip("the compilation cache is turned off (LRA_TEST_JAX_CACHE=0, as the GPU scripts do)")
    import jax

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    assert path and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path  # the workers' JAX picked the variable up
