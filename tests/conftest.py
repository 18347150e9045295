"""Shared pytest fixtures.

Reference-metric fixtures (COCO stats, text-detection Hmean) live in a ``shared/fixtures``
folder *beside* the repository checkout (``../shared/fixtures``), not inside it: CI provides it
there. Locally a missing folder skips those tests; in CI (env ``CI`` set) it is an error, so
the reference checks can never be skipped silently.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def _isolated_ray_and_hub() -> Iterator[None]:
    """Keep Ray's files, its auth token and sweeper's cache in a temp dir; never reach for a model hub.

    RAY_TMPDIR must stay short: Ray puts unix sockets under it (107-character limit).
    """
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    import secrets

    token = Path(ray_tmp) / "auth_token"  # Ray 2.60 wants the file to exist when the path is set
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["SWEEPER_CACHE_DIR"] = str(Path(ray_tmp) / "cache")  # timm's model names: not in the user's home
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
