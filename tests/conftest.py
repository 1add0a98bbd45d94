"""Test configuration: strict JAX, hypothesis profiles, small shared helpers."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import settings  # noqa: E402

# Surface implicit rank promotion (a classic source of silent per-example bugs).
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def rtol_for(dtype) -> float:
    """A relative tolerance that scales with the dtype's machine epsilon."""
    return float(64 * np.finfo(dtype).eps)
