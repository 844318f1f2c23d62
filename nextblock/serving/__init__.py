"""OpenAI-compatible serving: app.py (routes, errors, streaming), scheduler.py (continuous
batching between commits), schemas.py (request validation)."""

from .app import BackgroundServer, create_app

__all__ = ["BackgroundServer", "create_app"]
