"""Shared fixtures.  Compiled kernels are shared per module (numba compiles cost 1-3 s);
tests that only check the maths use ``jit=False``."""

import os
import tempfile

import numpy as np
import pytest

# A private cache for the run unless the caller chose one (CI may pass a warm one).
if "GRADC_CACHE_DIR" not in os.environ:
    os.environ["GRADC_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradc-test-cache-")


# Jacobian mode "auto" uses fixed default rates in tests (reproducible choices).
os.environ.setdefault("GRADC_CALIBRATION", "off")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
