"""Shared pytest fixtures.

Reference-metric fixtures (COCO stats, text-detection Hmean) live in a ``shared/fixtures``
folder *beside* the repository checkout (``../shared/fixtures``), not inside it: CI provides it
there. Locally a missing folder skips those tests; in CI (env ``CI`` set) it is an error, so
the reference checks can never be skipped silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """Path of ``../shared/fixtures``; skips (or fails under CI) when it is absent."""
    path = SHARED_FIXTURES.resolve()
    if not path.is_dir():
        reason = f"reference fixtures not found at {path} (expected ../shared/fixtures beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide them", pytrace=False)
        pytest.skip(reason)
    return path
