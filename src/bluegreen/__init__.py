"""bluegreen: zero-downtime blue-green deploys switched with nginx or HAProxy."""

__version__ = "0.1.0"
