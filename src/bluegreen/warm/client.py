"""The warm process's client: what the `bluegreen` program (``bluegreen.__main__``) uses to
hand a command to the warm process that $BLUEGREEN_WARM_SOCKET names.

It runs at the start of every such command, so it imports little of the standard library
and nothing else: with a warm process it is the whole client.

Hand-over: the request (argv, working directory, environment, umask) goes over the warm
process's Unix socket with this process's stdin, stdout and stderr attached (SCM_RIGHTS),
so the command writes to this terminal or pipe itself. Its answer is the pid of the process
running the command (signals sent here are passed on to its process group: Ctrl-C works as
it does without a warm process), then its exit status. If the warm process cannot take the
command (another installation, its code changed on disk, another network namespace or
other groups, not running), the command runs here as it would without one; once it took
the command, it never runs twice.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported only once a warm process is found: start-up)
    import socket

# A command is handed over only when its environment names the warm process's socket.
ENV_SOCKET = "BLUEGREEN_WARM_SOCKET"
# Signals passed on to the command (as the terminal would send them to its process group).
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")


def socket_path() -> str:
    """Where `bluegreen warm` starts (or finds) this user's warm process: $BLUEGREEN_WARM_SOCKET,
    else $XDG_RUNTIME_DIR/bluegreen/warm.sock, else ~/.cache/bluegreen/warm.sock."""
    explicit = os.environ.get(ENV_SOCKET)
    if explicit:
        return explicit
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bluegreen", "warm.sock")


def package_dir() -> str:
    """The bluegreen package's directory (this file is in its warm/ folder)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet_foreign_warnings() -> None:
    """Keep known deprecation warnings of the libraries bluegreen uses off the user's stderr
    (they are not the user's to fix, and `--json` progress on stderr must be JSON lines
    only). Each is ignored by its category and the module that triggers it, nothing more;
    BLUEGREEN_DEBUG=1, `python -W ...` or PYTHONWARNINGS leave every warning as Python shows
    it. Call before those libraries are imported: they warn once, at import."""
    if os.environ.get("BLUEGREEN_DEBUG") or sys.warnoptions:
        return
    import warnings

    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:
        return
    # asyncssh names cryptography's DSA classes at import; cryptography 51 (and later)
    # deprecate them: five lines on every command that reaches a host over SSH.
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"asyncssh\.")


def connect(path: str) -> socket.socket | None:
    """A connection to the warm process listening on ``path``, or None (none runs, or the
    socket or the process is not this user's own)."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return None
    import socket
    import struct

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        sock.close()
        return None
    if struct.unpack("3i", creds)[1] != os.getuid():
        sock.close()
        return None
    return sock


def hand_over(argv: list[str], path: str) -> int | None:
    """Run the command in the warm process listening on ``path``: its exit status, or None
    when it did not take the command (then nothing of it ran)."""
    sock = connect(path)
    if sock is None:
        return None
    import json
    import signal
    import socket

    umask = os.umask(0o022)
    os.umask(umask)
    try:
        request = json.dumps({
            "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
            "python": sys.executable, "package": package_dir(), **context(),
            "encoding": [getattr(s, "encoding", None) or "utf-8"
                         for s in (sys.stdin, sys.stdout, sys.stderr)],
        }).encode()
        socket.send_fds(sock, [len(request).to_bytes(4, "big") + request], [0, 1, 2])
        answers = sock.makefile("rb")
        first = json.loads(answers.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in first:  # refused: another installation, stale code; nothing ran
        if first.get("restart"):
            _restart(first["restart"])
        sock.close()
        return None
    group = int(first["pid"])

    def pass_on(signum: int, frame: object) -> None:
        try:
            os.killpg(group, signum)
        except OSError:
            pass

    for name in FORWARDED:
        signal.signal(getattr(signal, name), pass_on)
    try:
        last = json.loads(answers.readline() or b"{}")
    except (OSError, ValueError):
        last = {}
    if "exit" in last:
        return int(last["exit"])
    if "signal" not in last:
        sys.stderr.write("error: the warm process went away before the command's exit status "
                         "came; `bluegreen status` and `bluegreen history` show where it got\n")
        return 1
    # Ended by a signal: end the same way, as the shell expects of a killed command.
    signum = int(last["signal"])
    sys.stdout.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum


def context() -> dict[str, Any]:
    """What a process inherits that a hand-over cannot carry by itself: the warm process
    refuses a command whose network namespace or groups differ from its own (it would run
    with the wrong ones), and takes on its open-files limit."""
    import resource

    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = None
    return {"netns": netns, "groups": sorted(os.getgroups()),
            "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE))}


def _restart(argv: list[str]) -> None:
    """Start the warm process again (its code changed on disk), detached; this command runs
    here meanwhile."""
    import subprocess

    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    except OSError:
        pass
