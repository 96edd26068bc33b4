"""Shared test fixtures: the repository root on sys.path and the reference fixtures' folder."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Recorded with the authors' release (tests/fixtures/README.md): checkpoints, inputs, expected
# logits, state-dict layouts and the straight-through op's numbers.
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture(scope="session")
def reference_dir() -> str:
    """tests/fixtures: part of the repository, so never skipped."""
    return FIXTURES
