"""The one exception tree of bluegreen and the exit codes it maps to.

    BlueGreenError            1  the operation failed; live traffic was left as it was
    ├── CommandFailed         1  a command on a host exited non-zero or timed out
    ├── ProxyError            1  the proxy rejected the switch or never answered the new colour
    ├── SplitBrain            1  hosts or load balancers disagree on the live colour
    ├── ArtifactError         1  the artifact is missing, corrupt or unsafe
    ├── ConfigError           2  bad config or arguments; nothing was touched
    ├── ConnectError          3  a host could not be reached, or its host key is unknown/changed
    ├── LockHeld              4  another run holds the host's lock
    ├── Unhealthy             5  the new release never became healthy and was not promoted
    └── Interrupted         130  Ctrl-C (SIGINT) stopped the command; says what was left

The CLI prints ``error: <message>``; every message says what failed, where, and what
to do next. The reason and the host are kept apart (``reason``, ``host``) and composed
only by ``__str__``, so a caller can re-word the reason without string surgery.
"""

from __future__ import annotations


class BlueGreenError(Exception):
    """Base of every error bluegreen raises on purpose."""

    exit_code = 1

    def __init__(self, reason: str, *, host: str | None = None, detail: str = "") -> None:
        self.reason = reason
        self.host = host
        self.detail = detail
        super().__init__(reason)

    def __str__(self) -> str:
        return f"[{self.host}] {self.reason}" if self.host else self.reason

    @property
    def message(self) -> str:
        """The reason, with the host it happened on."""
        return str(self)


class CommandFailed(BlueGreenError):
    """A command on a host failed; ``detail`` holds the tail of its output."""


class ProxyError(BlueGreenError):
    """The proxy refused a change or did not answer as expected."""

    # The step of a switch it failed at, when the error reached a later one (a switch sent
    # with the verify that follows it, in one round trip).
    step: str | None = None


class SplitBrain(BlueGreenError):
    """Hosts or load balancers disagree on the live colour; only `promote COLOUR` mends it."""


class ArtifactError(BlueGreenError):
    """The release artifact is missing, corrupt or unsafe to unpack."""


class ConfigError(BlueGreenError):
    exit_code = 2


class ConnectError(BlueGreenError):
    exit_code = 3


class LockHeld(BlueGreenError):
    exit_code = 4


class Unhealthy(BlueGreenError):
    exit_code = 5


class CanaryFailed(BlueGreenError):
    """A canary step or a watch judged the new release bad; every request was sent back
    to the old colour and the new slot left running."""

    exit_code = 5


class Interrupted(BlueGreenError):
    """Ctrl-C stopped a command; the reason says what it left on each host and whether
    the lock is free (appended once the lock's release was tried)."""

    exit_code = 130
