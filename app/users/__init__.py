"""The /api/users resource."""

from app.users.routes import bp

__all__ = ["bp"]
