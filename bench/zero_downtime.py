"""Benchmark: failed requests under load while bluegreen switches, against the floor of
bare `nginx -s reload`s with no switch, measured in the same run.

    .venv/bin/python bench/zero_downtime.py [--switches 6] [--seconds 12] [--out bench/results]

(--seconds spreads the switches: one every seconds/(switches+1) s; the load lasts until
the last one is done.)

Load: wrk (-t2 -c50, --latency) through a private nginx (2 workers) to the bundled sample
app, once with keep-alive and once with `Connection: close`, during
  - `floor`:   K bare `nginx -s reload` (no link change),
  - `promote`: K `bluegreen promote` alternations blue <-> green,
  - `deploy`:  K full `bluegreen deploy` cycles (each drains and stops a slot).
Then 20 websocket clients stay connected through K promotes: abnormal closures and
connections that changed colour are counted. Writes results.json, results.md and
timeline.png (requests and errors per second, switch moments marked) to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import SERVER_NAME, Project  # noqa: E402

from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402

# Per-second counts of all and of non-2xx responses, merged from wrk's threads.
LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = {}; bad = {} end
function response(status, headers, body)
  local s = os.time()
  if status >= 200 and status < 300 then ok[s] = (ok[s] or 0) + 1
  else bad[s] = (bad[s] or 0) + 1 end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("ok")) do io.write(string.format("OK %d %d\n", s, n)) end
    for s, n in pairs(t:get("bad")) do io.write(string.format("BAD %d %d\n", s, n)) end
  end
end
"""


def parse_wrk(text: str) -> dict[str, Any]:
    def num(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = dict(zip(("connect", "read", "write", "timeout"),
                      map(int, sock.groups()))) if sock else {"connect": 0, "read": 0,
                                                              "write": 0, "timeout": 0}
    timeline: dict[int, list[int]] = {}
    for kind, sec, n in re.findall(r"^(OK|BAD) (\d+) (\d+)$", text, re.M):
        row = timeline.setdefault(int(sec), [0, 0])
        row[0 if kind == "OK" else 1] += int(n)
    return {"requests": num(r"(\d+) requests in"), "non_2xx": num(r"Non-2xx or 3xx responses: (\d+)"),
            "socket_errors": errors, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "timeline": sorted((s, ok, bad) for s, (ok, bad) in timeline.items())}


def run(p: Project, nginx: PrivateNginx, mode: str, switches: int, seconds: float,
        close: bool, lua: Path, versions: list[int]) -> dict[str, Any]:
    # wrk runs until every switch is done (plus a second), then gets SIGINT and reports.
    args = ["wrk", "-t2", "-c50", "-d600s", "--latency", "-s", str(lua),
            "-H", f"Host: {SERVER_NAME}"]
    if close:
        args += ["-H", "Connection: close"]
    wrk = subprocess.Popen([*args, f"http://127.0.0.1:{nginx.port}/"], stdout=subprocess.PIPE,
                           text=True)
    moments: list[float] = []
    gap = seconds / (switches + 1)
    colour = p.status()["live"]

    def act() -> None:
        nonlocal colour
        for _ in range(switches):
            time.sleep(gap)
            moments.append(time.time())
            if mode == "floor":
                subprocess.run(nginx.command("-s", "reload"), check=True, capture_output=True)
            elif mode == "promote":
                colour = "green" if colour == "blue" else "blue"
                p.bg("promote", colour)
            else:
                versions[0] += 1
                p.deploy(f"9.0.{versions[0]}")

    actor = threading.Thread(target=act)
    actor.start()
    actor.join()
    time.sleep(gap)
    wrk.send_signal(signal.SIGINT)
    out, _ = wrk.communicate(timeout=60)
    result = parse_wrk(out)
    errors = result["non_2xx"] + sum(result["socket_errors"].values())
    result.update(mode=mode, connection="close" if close else "keep-alive", switches=switches,
                  errors=errors, errors_per_switch=errors / max(switches, 1), moments=moments)
    return result


def websockets_across_promotes(p: Project, nginx: PrivateNginx, clients: int,
                               switches: int) -> dict[str, Any]:
    """N websocket clients through nginx, K promotes: how many connections closed, and
    whether each kept talking to the colour it was opened on."""
    import socket
    from contextlib import ExitStack

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    closed = wrong_colour = exchanges = 0
    with ExitStack() as stack:
        conns = []
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=5)
            conns.append(stack.enter_context(connect(f"ws://{SERVER_NAME}/ws", sock=sock)))
        first = {id(c): None for c in conns}
        colour = p.status()["live"]
        for _ in range(switches):
            colour = "green" if colour == "blue" else "blue"
            p.bg("promote", colour)
            for c in list(conns):
                try:
                    c.send("ping")
                    answer = str(c.recv(timeout=5))
                    exchanges += 1
                except (ConnectionClosed, TimeoutError, OSError):
                    closed += 1
                    conns.remove(c)
                    continue
                seen = answer.rsplit("(", 1)[-1].rstrip(")")
                if first[id(c)] is None:
                    first[id(c)] = seen
                elif first[id(c)] != seen:
                    wrong_colour += 1
    return {"clients": clients, "promotes": switches, "exchanges": exchanges,
            "abnormal_closures": closed, "changed_colour": wrong_colour}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.2 * len(results)), sharex=False)
    for ax, r in zip(axes, results):
        if not r["timeline"]:
            continue
        t0 = r["timeline"][0][0]
        xs = [s - t0 for s, _, _ in r["timeline"]]
        ax.plot(xs, [ok for _, ok, _ in r["timeline"]], label="2xx / s")
        ax.bar(xs, [bad for _, _, bad in r["timeline"]], color="red", label="non-2xx / s")
        for m in r["moments"]:
            ax.axvline(m - t0, color="grey", linestyle=":")
        ax.set_title(f"{r['mode']} ({r['connection']}): {r['requests']} requests, "
                     f"{r['errors']} errors, p99 {r['p99_ms']:.1f} ms", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("seconds (dotted: switch / reload moments)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-zd-") as tmp:
        base = Path(tmp)
        nginx = PrivateNginx(base / "nginx", free_port())
        nginx.write_config(workers=2)
        nginx.start()
        (base / "home").mkdir()
        (base / "project").mkdir()
        p = Project(base / "project", nginx, "local", free_port(), free_port(), None, base / "home")
        p.extra_run = {"drain_timeout": 5}
        p.write_config()
        lua = base / "count.lua"
        lua.write_text(LUA)
        versions = [0]
        try:
            p.bg("setup")
            p.deploy("1.0.0")
            p.deploy("2.0.0")
            for close in (False, True):
                for mode in ("floor", "promote", "deploy"):
                    results.append(run(p, nginx, mode, args.switches, args.seconds, close, lua,
                                       versions))
            ws = websockets_across_promotes(p, nginx, clients=20, switches=args.switches)
        finally:
            p.cleanup()
            nginx.stop()
    (args.out / "results.json").write_text(json.dumps({"http": results, "websockets": ws},
                                                      indent=1))
    lines = ["| run | connection | switches | requests | non-2xx | socket errors (c/r/w/t) | "
             "errors per switch | p50 | p99 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r["socket_errors"]
        lines.append(f"| {r['mode']} | {r['connection']} | {r['switches']} | {r['requests']} | "
                     f"{r['non_2xx']} | {e['connect']}/{e['read']}/{e['write']}/{e['timeout']} | "
                     f"{r['errors_per_switch']:.1f} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |")
    lines += ["", f"websockets: {ws['clients']} clients across {ws['promotes']} promotes: "
              f"{ws['exchanges']} exchanges, {ws['abnormal_closures']} abnormal closures, "
              f"{ws['changed_colour']} connections that changed colour"]
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    try:
        plot(results, args.out / "timeline.png")
    except ImportError:
        print("(matplotlib not installed: no timeline.png)")
    print(table)


if __name__ == "__main__":
    main()
