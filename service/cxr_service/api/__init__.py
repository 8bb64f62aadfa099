"""The HTTP API of the service (FastAPI)."""

from cxr_service.api.app import create_app

__all__ = ["create_app"]
