"""Shared test configuration: strict numerics, PRNG keys and hypothesis profiles.

Profiles: `ci` (deterministic, the default) and `dev` (more, random examples). Pick one
with `SUPEROPT_HYPOTHESIS_PROFILE=dev pytest`.
"""

from __future__ import annotations

import os

import jax
import jax.random as jr
import pytest
from hypothesis import HealthCheck, settings

# Our own code must never rely on implicit rank promotion; a test that calls a library
# which does scopes `jax.numpy_rank_promotion("allow")` around that call.
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("SUPEROPT_HYPOTHESIS_PROFILE", "ci"))


class _GetKey:
    """Hands out a fresh PRNG key on each call, from a fixed seed."""

    def __init__(self, seed: int) -> None:
        self._key = jr.PRNGKey(seed)

    def __call__(self) -> jax.Array:
        self._key, sub = jr.split(self._key)
        return sub


@pytest.fixture
def getkey() -> _GetKey:
    """`getkey()` gives a new PRNG key each time, the same sequence in every test."""
    return _GetKey(0)
