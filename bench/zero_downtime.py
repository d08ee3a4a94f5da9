"""Benchmark: failed requests under load while bluegreen switches, for each proxy kind,
against the floor of bare proxy reloads with no switch, measured in the same run.

    .venv/bin/python bench/zero_downtime.py [--kinds nginx,haproxy] [--switches 6]
        [--seconds 12] [--out bench/results]

(--seconds spreads the switches: one every seconds/(switches+1) s; the load lasts until
the last one is done.)

Load: wrk (-t2 -c50, --latency) through a private proxy (nginx with 2 workers, or HAProxy)
to the bundled sample app, once with keep-alive and once with `Connection: close`, during
  - `floor`:   K bare reloads of the proxy (`nginx -s reload`; HAProxy's `-sf` reload),
               no switch,
  - `promote`: K `bluegreen promote` alternations blue <-> green,
  - `deploy`:  K full `bluegreen deploy` cycles (each drains and stops a slot).
Meanwhile one keep-alive client sends requests one after another and times each: the p99
of those within [-0.5 s, +1 s] of a switch is compared with the p99 of the others.
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

from bluegreen.demo.haproxy import PrivateHAProxy  # noqa: E402
from bluegreen.demo.nginx import PrivateNginx, free_port  # noqa: E402

Proxy = PrivateNginx | PrivateHAProxy

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


class LatencyProbe:
    """One keep-alive client, one request at a time: (time, seconds, ok) per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop.is_set():
            started = time.monotonic()
            ok = False
            try:
                conn.request("GET", "/", headers={"Host": SERVER_NAME})
                resp = conn.getresponse()
                resp.read()
                ok = 200 <= resp.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()  # a fresh connection next time (the error is counted)
            self.samples.append((time.time(), time.monotonic() - started, ok))
            time.sleep(0.005)
        conn.close()

    def summary(self, moments: list[float]) -> dict[str, Any]:
        near = [s for s in self.samples if any(m - 0.5 <= s[0] <= m + 1.0 for m in moments)]
        far = [s for s in self.samples if s not in near]

        def p99(rows: list[tuple[float, float, bool]]) -> float:
            values = sorted(r[1] for r in rows)
            return values[int(0.99 * (len(values) - 1))] * 1000 if values else float("nan")

        steady, around = p99(far), p99(near)
        return {"probe_requests": len(self.samples),
                "probe_errors": sum(1 for s in self.samples if not s[2]),
                "p99_steady_ms": steady, "p99_around_switch_ms": around,
                "p99_ratio": around / steady if steady else float("nan")}


def reload_proxy(proxy: Proxy) -> None:
    if isinstance(proxy, PrivateNginx):
        subprocess.run(proxy.command("-s", "reload"), check=True, capture_output=True)
    else:
        subprocess.run(["sh", "-c", proxy.reload_command], check=True, capture_output=True)


def run(p: Project, nginx: Proxy, mode: str, switches: int, seconds: float,
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
    probe = LatencyProbe(nginx.port)
    probe.thread.start()

    def act() -> None:
        nonlocal colour
        for _ in range(switches):
            time.sleep(gap)
            moments.append(time.time())
            if mode == "floor":
                reload_proxy(nginx)
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
    probe.stop.set()
    probe.thread.join()
    result = parse_wrk(out)
    errors = result["non_2xx"] + sum(result["socket_errors"].values())
    result.update(proxy=nginx.kind, mode=mode, connection="close" if close else "keep-alive",
                  switches=switches, errors=errors, errors_per_switch=errors / max(switches, 1),
                  moments=moments, **probe.summary(moments))
    return result


def websockets_across_promotes(p: Project, nginx: Proxy, clients: int,
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
    return {"proxy": nginx.kind, "clients": clients, "promotes": switches,
            "exchanges": exchanges,
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
        ax.set_title(f"{r['proxy']} {r['mode']} ({r['connection']}): {r['requests']} requests, "
                     f"{r['errors']} errors, p99 {r['p99_ms']:.1f} ms", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("seconds (dotted: switch / reload moments)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def project_behind(kind: str, base: Path) -> tuple[Proxy, Project]:
    """A private, started proxy of ``kind`` (nginx with 2 workers) under ``base`` and a
    local project behind it (its config not written yet)."""
    proxy: Proxy
    if kind == "nginx":
        proxy = PrivateNginx(base / "nginx", free_port())
        proxy.write_config(workers=2)
    else:
        proxy = PrivateHAProxy(base / "haproxy", free_port())
        proxy.write_config()
    proxy.start()
    (base / "home").mkdir()
    (base / "project").mkdir()
    p = Project(base / "project", proxy, "local", free_port(), free_port(), None, base / "home")
    return proxy, p


def bench_kind(kind: str, base: Path, switches: int, seconds: float, lua: Path,
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    proxy, p = project_behind(kind, base)
    p.extra_run = {"drain_timeout": 5}
    p.write_config()
    versions = [0]
    results = []
    try:
        p.bg("setup")
        p.deploy("1.0.0")
        p.deploy("2.0.0")
        for close in (False, True):
            for mode in ("floor", "promote", "deploy"):
                results.append(run(p, proxy, mode, switches, seconds, close, lua, versions))
        ws = websockets_across_promotes(p, proxy, clients=20, switches=switches)
    finally:
        p.cleanup()
        proxy.stop()
    return results, ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="nginx,haproxy")
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    sockets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bluegreen-bench-zd-") as tmp:
        lua = Path(tmp) / "count.lua"
        lua.write_text(LUA)
        for kind in args.kinds.split(","):
            (Path(tmp) / kind).mkdir()
            http, ws = bench_kind(kind, Path(tmp) / kind, args.switches, args.seconds, lua)
            results += http
            sockets.append(ws)
    (args.out / "results.json").write_text(json.dumps({"http": results, "websockets": sockets},
                                                      indent=1))
    floors = {(r["proxy"], r["connection"]): r["errors_per_switch"] for r in results
              if r["mode"] == "floor"}
    lines = ["| proxy | run | connection | switches | requests | non-2xx | socket errors "
             "(c/r/w/t) | errors per switch | vs floor | p50 | p99 | probe p99 around switch "
             "/ steady |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r["socket_errors"]
        floor = floors[(r["proxy"], r["connection"])]
        ratio = ("-" if r["mode"] == "floor" else
                 f"{r['errors_per_switch'] / floor:.2f}" if floor else
                 "0 / 0" if r["errors"] == 0 else "above a 0 floor")
        lines.append(
            f"| {r['proxy']} | {r['mode']} | {r['connection']} | {r['switches']} | "
            f"{r['requests']} | {r['non_2xx']} | "
            f"{e['connect']}/{e['read']}/{e['write']}/{e['timeout']} | "
            f"{r['errors_per_switch']:.1f} | {ratio} | {r['p50_ms']:.2f} ms | "
            f"{r['p99_ms']:.2f} ms | {r['p99_around_switch_ms']:.1f} / {r['p99_steady_ms']:.1f} ms "
            f"= {r['p99_ratio']:.2f}x |")
    lines.append("")
    for ws in sockets:
        lines.append(f"websockets ({ws['proxy']}): {ws['clients']} clients across "
                     f"{ws['promotes']} promotes: {ws['exchanges']} exchanges, "
                     f"{ws['abnormal_closures']} abnormal closures, {ws['changed_colour']} "
                     "connections that changed colour")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    try:
        plot(results, args.out / "timeline.png")
    except ImportError:
        print("(matplotlib not installed: no timeline.png)")
    print(table)


if __name__ == "__main__":
    main()
