"""Fixtures shared by the integration tests: a real HTTP webhook receiver (uvicorn)."""

from tests.integration.test_webhook_delivery import receiver

__all__ = ["receiver"]
