"""HTTP layer: the FastAPI app factory, endpoints and middleware."""

from gateway.http.app import create_app

__all__ = ["create_app"]
