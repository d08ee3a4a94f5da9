"""Round trips per host, as bluegreen counts them (`--json`, `-v`) and as the server saw
them: the SSH sessions and uploads in a dedicated sshd's log (each request at DEBUG1), the
commands and checks as the agent on the host answered them. They must agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import PrivateNginx, make_project, start_sshd


def seen_by_sshd(log: Path, offset: int) -> dict[str, int]:
    """What the sshd logged after ``offset``: exec requests, sftp sessions, forwardings."""
    text = log.read_text(errors="replace")[offset:]
    return {"exec": len(re.findall(r"req exec", text)),
            "uploads": len(re.findall(r"req subsystem", text)),
            "forwardings": len(re.findall(r"ctype direct-(?:tcpip|streamlocal)", text))}


def test_round_trips_counted_by_bluegreen_match_what_the_server_saw(
        tmp_path: Path, nginx: PrivateNginx) -> None:
    sshd = start_sshd(tmp_path / "sshd", log_level="DEBUG1")
    p = make_project(tmp_path, nginx, sshd)
    log = sshd.dir / "sshd.log"
    try:
        p.bg("setup")
        p.deploy("1.0.0")
        results = {}
        for name, args in (("deploy", ["deploy", "--version", "2.0.0", "--json"]),
                           ("promote", ["promote", "blue", "--json"]),
                           # the release is on the host already: restarted, not uploaded
                           ("redeploy", ["deploy", "--version", "2.0.0", "--no-promote",
                                         "--json"]),
                           ("status", ["status", "--json"])):
            if name == "deploy":
                p.artifact("2.0.0")
            offset = len(log.read_text(errors="replace"))
            out = json.loads(p.bg(*args).stdout)
            counted = out["hosts"][0].get("round_trips")
            if name == "status":
                continue
            assert counted is not None, out
            seen = seen_by_sshd(log, offset)
            # One session runs the agent; each upload is an sftp session; no forwarding.
            assert seen == {"exec": 1, "uploads": counted["uploads"], "forwardings": 0}, seen
            assert counted["sessions"] == seen["exec"] + seen["uploads"], (counted, seen)
            assert counted["seen_by_host"] == counted["commands"] + counted["checks"], counted
            assert counted["total"] == (counted["commands"] + counted["checks"]
                                        + counted["uploads"]), counted
            results[name] = counted["total"]
        print(f"round trips per host: {results}")
        # What docs/how-it-works.md says (a count, not a time: the same on any machine).
        assert results["deploy"] <= 6 and results["promote"] <= 3, results
        # no upload, no switch; the idle slot (2.0.0) stopped and started again
        assert seen["uploads"] == 0 and results["redeploy"] <= 5, results
    finally:
        p.cleanup()
        sshd.stop()
