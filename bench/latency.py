"""Benchmark: promote and deploy over an SSH link with latency, this code (without and
with a warm process, `bluegreen warm`) against an older revision, in one run: what fewer
round trips, and a kept SSH connection, are worth on a real network.

    .venv/bin/python bench/latency.py [--delay 0.01] [--rounds 5] [--against 1c7140a]

A relay on 127.0.0.1 delays every byte between bluegreen and a private sshd by --delay
seconds each way (--delay 0.01: a 20 ms round trip, e.g. a server in the next country;
this kernel has no netem). Each revision gets its own nginx, project and sample app; the
older one runs from a git worktree of --against. Prints a Markdown table. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import Project, Sshd, start_sshd  # noqa: E402

from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402


class Relay(threading.Thread):
    """127.0.0.1:port -> 127.0.0.1:target, each chunk delivered ``delay`` s after it was
    read, in order (latency, not a bandwidth limit)."""

    def __init__(self, target: int, delay: float) -> None:
        super().__init__(daemon=True)
        self.target, self.delay, self.port = target, delay, free_port()
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.ready.set()
        async with server:
            await server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        task = asyncio.create_task(deliver())
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + self.delay, data))
            if not data:
                break
        await task


def measure(name: str, src: Path, base: Path, sshd: Sshd, relay: Relay,
            rounds: int, warm: bool = False) -> dict[str, object]:
    """``warm``: with a warm process (`bluegreen warm`: imports done, SSH connection kept)."""
    os.environ["PYTHONPATH"] = str(src)
    if warm:
        os.environ["BLUEGREEN_WARM_SOCKET"] = str(base / name / "warm" / "warm.sock")
    else:
        os.environ.pop("BLUEGREEN_WARM_SOCKET", None)
    nginx = PrivateNginx(base / name / "nginx", free_port())
    nginx.write_config(workers=2)
    nginx.start()
    (base / name / "home").mkdir(parents=True)
    (base / name / "project").mkdir()
    known = base / name / "known_hosts"
    key = (sshd.dir / "ssh_host_ed25519_key.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{relay.port} {key[0]} {key[1]}\n")
    p = Project(base / name / "project", nginx, "ssh", free_port(), free_port(),
                sshd, base / name / "home")
    p.host_override = {"port": relay.port, "known_hosts": str(known)}
    p.write_config()
    try:
        if warm:
            p.bg("warm", "--idle", "60")
        p.bg("setup")
        p.deploy("1.0.0")
        deploys, promotes, trips = [], [], []
        for i in range(rounds):
            t0 = time.perf_counter()
            p.deploy(f"2.{i}.0")
            deploys.append(time.perf_counter() - t0)
        colour = "blue"
        for _ in range(rounds):
            colour = "green" if colour == "blue" else "blue"
            t0 = time.perf_counter()
            out = p.bg("promote", colour, "--json")
            promotes.append(time.perf_counter() - t0)
            trips.append(json.loads(out.stdout)["hosts"][0]["round_trips"]["total"])
        return {"code": name, "promote": statistics.median(promotes),
                "deploy": statistics.median(deploys), "promote_round_trips": trips[-1]}
    finally:
        if warm:
            p.bg("warm", "--stop")
        p.cleanup()
        nginx.stop()
        for var in ("PYTHONPATH", "BLUEGREEN_WARM_SOCKET"):
            os.environ.pop(var, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.01, help="seconds, each way")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", default="1c7140a", help="the older revision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-lat-") as tmp:
        base = Path(tmp)
        old = base / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old),
                        args.against], check=True)
        sshd = start_sshd(base / "sshd")
        relay = Relay(sshd.port, args.delay)
        relay.start()
        relay.ready.wait(5)
        try:
            rows = [measure("this-code", ROOT / "src", base, sshd, relay, args.rounds),
                    measure("this-code-warm", ROOT / "src", base, sshd, relay, args.rounds,
                            warm=True),
                    measure(f"at-{args.against}", old / "src", base, sshd, relay,
                            args.rounds)]
        finally:
            sshd.stop()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False)
    print(f"SSH round trip +{2 * args.delay * 1000:.0f} ms (relay), medians of {args.rounds}")
    print("| code | promote | deploy | round trips: promote |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['promote']:.2f} s | {r['deploy']:.2f} s | "
              f"{r['promote_round_trips']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
