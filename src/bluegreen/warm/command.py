"""`bluegreen warm`: start, stop or ask this user's warm process; and ``program``, the
`bluegreen` group with it added (the CLI below knows nothing of the warm process)."""

from __future__ import annotations

import os
import shlex
import sys

import click

from bluegreen.errors import BlueGreenError


@click.command(help="Start (or find) a warm bluegreen process for this user and print the "
                    "shell line that sends this shell's commands to it: "
                    "`eval \"$(bluegreen warm)\"`. Commands then start in milliseconds "
                    "instead of ~0.3 s (imports done once; each runs in a fork of it, with "
                    "your terminal, environment, directory, time zone and open-files limit) "
                    "and reuse its SSH connections (verified again after any change to "
                    "known_hosts, keys or ~/.ssh). Only a shell or job whose environment has "
                    "BLUEGREEN_WARM_SOCKET uses it; a command in another network namespace "
                    "or with other groups runs on its own. It exits after --idle seconds "
                    "without a command, or when bluegreen is upgraded. Its socket: "
                    "$XDG_RUNTIME_DIR/bluegreen/warm.sock (else ~/.cache/bluegreen/; "
                    "BLUEGREEN_WARM_SOCKET chooses another). More: `bluegreen docs "
                    "operations`.")
@click.option("--idle", type=click.FloatRange(min=1), default=600, show_default=True,
              metavar="SECONDS", help="Exit after this long without a command.")
@click.option("--stop", "action", flag_value="stop",
              help="Stop it (running commands go on); prints `unset BLUEGREEN_WARM_SOCKET`.")
@click.option("--status", "action", flag_value="status",
              help="Say whether it runs (exit 1 if not).")
def warm(idle: float, action: str | None) -> None:
    from bluegreen.warm import server as warmth
    from bluegreen.warm.client import ENV_SOCKET, socket_path

    # stdout is for the shell (`eval "$(bluegreen warm)"`); what a person reads goes to stderr.
    try:
        if action == "stop":
            pid = warmth.stop()
            click.echo(f"stopped the warm process (pid {pid})" if pid else
                       f"no warm process listens on {socket_path()}", err=True)
            click.echo(f"unset {ENV_SOCKET};")
            return
        if action == "status":
            pid = warmth.status()
            click.echo(f"the warm process runs (pid {pid}, socket {socket_path()})" if pid
                       else f"no warm process listens on {socket_path()}")
            sys.exit(0 if pid else 1)
        path, pid, started = warmth.start(idle)
    except BlueGreenError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    if started:
        click.echo(f"started the warm process (pid {pid}, socket {path}); it exits after "
                   f"{idle:g}s without a command (`bluegreen warm --stop` stops it)", err=True)
    else:
        click.echo(f"the warm process runs already (pid {pid}, socket {path})", err=True)
    click.echo(f"export {ENV_SOCKET}={shlex.quote(os.path.abspath(path))};")


def program() -> click.Group:
    """The `bluegreen` command group, `bluegreen warm` included."""
    from bluegreen.cli import main as group

    group.add_command(warm)
    return group
