"""HTTP API: FastAPI routers, schemas and problem+json errors."""

from tidings.api.app import create_api

__all__ = ["create_api"]
