"""Shared fixtures. Services the tests need (PostgreSQL, Redis) are found through
TIDINGS_TEST_PG_URL / TIDINGS_TEST_REDIS_URL (defaults: the local servers). Without them the
tests skip with the reason; under CI=true an unreachable service fails the run instead."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

from tidings.adapters.clock import ManualClock

PG_URL = os.environ.get("TIDINGS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1.0
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip (or, under CI, fail) when a service the test needs is not reachable."""
    if _reachable(url, default_port):
        return
    message = f"{name} not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def pg_url() -> str:
    require_service("PostgreSQL", PG_URL, 5432)
    return PG_URL


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
