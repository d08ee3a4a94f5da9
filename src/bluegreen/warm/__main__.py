"""`python -m bluegreen.warm SOCKET IDLE`: the warm process itself (started by `bluegreen warm`)."""

import sys

from bluegreen.warm.client import quiet_foreign_warnings

# Before asyncssh is imported (by the server): the warm process's log, and the commands it
# forks, carry none of its import-time warnings either.
quiet_foreign_warnings()

from bluegreen.warm.server import serve  # noqa: E402

serve(sys.argv[1], float(sys.argv[2]))
