"""Test configuration: strict JAX, hypothesis profiles, small shared helpers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Surface implicit rank promotion (a classic source of silent per-example bugs).
jax.config.update("jax_numpy_rank_promotion", "raise")


settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def rtol_for(dtype) -> float:
    """A relative tolerance that scales with the dtype's machine epsilon."""
    return float(64 * np.finfo(dtype).eps)


# Strict dtype promotion (as equinox's tests run) for the mechanism's tests: an implicit
# int/float or float32/bfloat16 mix is an error, so a silently widened or narrowed gradient
# cannot hide in clipping, noise or accounting. Tests that run optax optimizers (adam's bias
# correction promotes its int32 step count implicitly) and the end-to-end consumers run with
# JAX's standard promotion; a mechanism test that needs it says so with a marker.
_CONSUMER_TESTS = {
    "test_readme.py",
    "test_notebooks.py",
    "test_benchmarks_smoke.py",
    "test_docstrings.py",
}


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    path = request.node.path
    strict = (
        path.parent.name == "tests"
        and path.name not in _CONSUMER_TESTS
        and request.node.get_closest_marker("standard_promotion") is None
    )
    with jax.numpy_dtype_promotion("strict" if strict else "standard"):
        yield
