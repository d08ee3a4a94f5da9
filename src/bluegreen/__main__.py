"""The `bluegreen` program (its entry point, and `python -m bluegreen`): a command is handed
to the warm process that $BLUEGREEN_WARM_SOCKET names (a shell that ran
`eval "$(bluegreen warm)"`: ``bluegreen.warm``), else it runs in this process.

This runs at the start of every command: it imports nothing beyond the standard library
until it knows where the command runs."""

import os
import sys

from bluegreen.warm.client import ENV_SOCKET, hand_over, quiet_foreign_warnings


def main() -> None:
    explicit = os.environ.get(ENV_SOCKET)
    # `bluegreen warm` itself runs here: it starts, stops or asks the warm process (and must
    # not restart a stale one it was asked to stop).
    if explicit and sys.argv[1:2] != ["warm"]:
        status = hand_over(sys.argv[1:], explicit)
        if status is not None:
            sys.exit(status)
    quiet_foreign_warnings()
    from bluegreen.warm.command import program

    # The same name (and completion variable, _BLUEGREEN_COMPLETE) as the `bluegreen` script.
    program()(prog_name="bluegreen")


if __name__ == "__main__":
    main()
