"""Builders for reading and writing files on a host (content always goes over stdin)."""

from __future__ import annotations

import functools
import shlex
from pathlib import PurePosixPath
from typing import Callable, ParamSpec

P = ParamSpec("P")

Argv = list[str]
# Commands run one after the other, stdin (if any) to the first. Under sudo each step is a
# fixed argv, so the sudoers drop-in can name it exactly (`plan.sudoers`).
Steps = list[Argv]


class Query(list[str]):
    """An argv that only reads the host (a file, a link, a process table). A dry run
    (`--dry-run`) runs these for real, and prints every other command instead."""


class FileRead(Query):
    """A Query that prints a file: within one command, until something is written on the
    host, reading it again gives the same answer (``fleet.Node`` keeps it)."""


def query(argv: Argv) -> Query:
    return Query(argv)


def reading(fn: Callable[P, Argv]) -> Callable[P, Query]:
    """Mark a builder whose command only reads (see `Query`)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Query:
        return Query(fn(*args, **kwargs))

    return wrapper


def sh(script: str, *args: str | PurePosixPath) -> Argv:
    """A POSIX shell script with positional arguments: values never touch the script text."""
    return ["sh", "-c", script, "sh", *[str(a) for a in args]]


def sudo(argv: Argv, use_sudo: bool) -> Argv:
    return ["sudo", "-n", *argv] if use_sudo else argv


def shell_command(command: str, use_sudo: bool) -> Argv:
    """A user's shell command from the config (e.g. ``proxy.reload``). Under sudo it runs
    without a shell, as its words, so that sudoers can allow exactly it (and not `sh -c`,
    which would allow anything)."""
    return ["sudo", "-n", *shlex.split(command)] if use_sudo else ["sh", "-c", command]


def write_file(path: PurePosixPath, mode: str = "0640") -> Argv:
    """Atomically replace ``path`` with stdin (temp file in the same dir, then rename)."""
    return sh(
        'umask 077; tmp="$1.bluegreen-tmp"; cat > "$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$1"',
        path,
        mode,
    )


def replace_config(path: PurePosixPath, use_sudo: bool) -> Steps:
    """Atomically replace a root-owned config file with stdin, mode 0644; the temp file has
    a dot name in the same dir, which ``*.conf``-style includes do not match."""
    tmp = path.parent / f".{path.name}.bluegreen-tmp"
    if use_sudo:
        return [["sudo", "-n", "tee", str(tmp)], ["sudo", "-n", "mv", "-f", str(tmp), str(path)]]
    return [sh('cat > "$1" && chmod 0644 "$1" && mv -f "$1" "$2"', tmp, path)]


def remove_config(path: PurePosixPath, use_sudo: bool) -> Argv:
    return sudo(["rm", "-f", str(path)], use_sudo)


# One write(2) with O_APPEND of the whole of stdin (a line): `cat >>` may write it in
# pieces, and a crash or a full disk between them left half a line, which the next line
# then continued (one unreadable line: the next event lost). A short write is cut back off;
# after a line torn anyway (a power cut), the new one starts on a line of its own.
# python3: the agent needs it on every host already. Python 3.6 or later.
APPEND_LINE = "; ".join([  # one line: it is what `--dry-run` prints
    "import os, sys",
    "line = sys.stdin.buffer.read()",
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)",
    "size = os.fstat(fd).st_size",
    "line = b'\\n' * (size > 0 and os.pread(fd, 1, size - 1) != b'\\n') + line",
    "written = os.write(fd, line)",  # OSError (a full disk) when it wrote nothing
    "written == len(line) or sys.exit(os.ftruncate(fd, size) or 'cannot append to %s: "
    "wrote %d of %d bytes' % (sys.argv[1], written, len(line)))",
])


def append_file(path: PurePosixPath) -> Argv:
    """Append stdin (one line) to ``path`` in one write: whole, or not at all."""
    return ["python3", "-I", "-S", "-c", APPEND_LINE, str(path)]


def read_file(path: PurePosixPath) -> FileRead:
    """Print ``path``; prints nothing (exit 0) when it does not exist."""
    return FileRead(sh('if [ -f "$1" ]; then cat "$1"; fi', path))


def make_dirs(paths: list[PurePosixPath]) -> Argv:
    return ["mkdir", "-p", "--", *[str(p) for p in paths]]



def remove_file(path: PurePosixPath) -> Argv:
    return ["rm", "-f", "--", str(path)]


def exists(path: PurePosixPath) -> Query:
    """Exit 0 when ``path`` is a regular file."""
    return query(["test", "-f", str(path)])


def free_space(path: PurePosixPath) -> Argv:
    """``df`` of the filesystem holding ``path``, in KiB (read by `parse_free_space`)."""
    return query(["df", "-Pk", str(path)])


def parse_free_space(output: str) -> str:
    """A sentence on the space left, from `free_space`'s output."""
    lines = output.splitlines()
    fields = lines[-1].split() if lines else []
    if len(fields) >= 6 and fields[3].isdigit():
        return f"{int(fields[3]) / 1024:.1f} MB free on {fields[5]}"
    return "free space unknown"
