"""bluegreen: zero-downtime blue-green deploys switched with nginx."""

__version__ = "0.1.0"
