"""Hostile config: generated malformed files always give a ConfigError (exit 2) naming a
key path, never a traceback."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bluegreen.config import SLOT_PLACEHOLDERS, parse_config, render
from bluegreen.errors import ConfigError

GOOD: dict[str, Any] = {
    "app": "myapp",
    "release": {"version": "0.1.0", "artifact": "dist/myapp-{version}.tar.gz", "keep": 5},
    "run": {"command": "python3 app.py --port {port}", "health_timeout": 30,
            "env": {"NODE": "{app}_{color}"}},
    "slots": {"blue": 4000, "green": 5000},
    "proxy": {"server_name": "myapp.example.com", "listen": "80"},
    "hosts": [{"address": "deploy@web1", "port": 22, "deploy_to": "/srv/{app}"}],
}

PATHS = [("app",), ("release", "version"), ("release", "keep"), ("release", "artifact"),
         ("run", "command"), ("run", "health_timeout"), ("run", "env"), ("run", "start"),
         ("slots", "blue"), ("slots", "green"), ("slots", "bind"), ("proxy", "listen"),
         ("proxy", "server_name"), ("proxy", "site"), ("hosts",), ("hosts", 0, "address"),
         ("hosts", 0, "port"), ("hosts", 0, "deploy_to"), ("deploy", "boot_limit"),
         ("hooks", "pre_deploy"), ("load_balancers",)]

scalars = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6), st.floats(allow_nan=True), st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["{colour}", "{port", "}", "{app.x}", "a; rm -rf /", "$(id)", "", "80",
                     "local", "-1", "{{}}", "4000", "/", "relative/path", "x" * 300]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def mutate(data: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> None:
    node: Any = data
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), values, st.booleans()), min_size=1,
                max_size=4),
       st.dictionaries(st.sampled_from(["bogus", "Release", "run2"]), values, max_size=1))
def test_malformed_configs_are_config_errors(mutations: list[Any], extra: dict[str, Any]) -> None:
    data = copy.deepcopy(GOOD)
    for path, value, delete in mutations:
        mutate(data, path, value, delete)
    data.update(extra)
    try:
        cfg = parse_config(data, Path("/tmp"))
    except ConfigError as exc:
        assert exc.exit_code == 2
        # Each problem starts with the key path, rooted at a top-level key of the file.
        message = exc.message.removeprefix("invalid config: ")
        # problems are joined by "; " (a value quoted in one may hold "; " too)
        for problem in re.split(r"; (?=\(top level\)|[A-Za-z_][\w.\[\]]*: )", message):
            root = re.split(r"[.\[:]", problem, maxsplit=1)[0]
            if problem.startswith(("(top level)", "base_dir")):
                continue
            assert root in data or root in GOOD, exc.message
        return
    # A config that passes is usable: every slot command and env value renders.
    ctx = {name: "x" for name in SLOT_PLACEHOLDERS}
    for value in [cfg.run.command, cfg.run.start, *cfg.run.env.values()]:
        if value is not None:
            render(value, **ctx)
    for host in cfg.hosts:
        cfg.bind_address(host)


def test_cli_never_prints_a_traceback_for_bad_files(tmp_path: Path) -> None:
    samples = [
        'app = 1\n',
        'app = "x"\n[run]\ncommand = "a {nope}"\n[[hosts]]\naddress = "local"\n',
        'app = "x"\n[run]\ncommand = "a"\n[slots]\nblue = 1\ngreen = 1\n[[hosts]]\naddress = "local"\n',
        'app = "x"\n[run]\ncommand = "a"\n[[hosts]]\naddress = "bad host!"\n',
        'app = "x"\nhosts = "web1"\n[run]\ncommand = "a"\n',
        '[[[broken',
    ]
    for text in samples:
        (tmp_path / "bluegreen.toml").write_text(text)
        proc = subprocess.run([sys.executable, "-m", "bluegreen", "check"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (text, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
