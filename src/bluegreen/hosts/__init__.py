"""Execution: one small interface, LocalHost and SSHHost behind it."""

from bluegreen.hosts.base import Host, Result, Stream, connect

__all__ = ["Host", "Result", "Stream", "connect"]
