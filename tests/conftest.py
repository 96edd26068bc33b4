"""Shared test fixtures: the repository root on sys.path and the reference fixtures' folder."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REFERENCE = os.path.join(ROOT, "..", "shared", "reference")


@pytest.fixture(scope="session")
def reference_dir() -> str:
    """../shared/reference beside the checkout (CI lays it there too)."""
    if not os.path.isdir(REFERENCE):
        pytest.skip("../shared/reference is not beside this checkout")
    return REFERENCE
