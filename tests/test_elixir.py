"""The seed's own stack: a real `mix release` (Elixir, :inets httpd), deployed with the
elixir preset's settings, local and over SSH: node names, migrations, console, logs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pexpect
import pytest

from conftest import BLUEGREEN, Project

APP_SRC = Path(__file__).resolve().parent / "apps" / "elixir"


@pytest.fixture(scope="session")
def elixir_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_elixir_release(tmp_path_factory.mktemp("elixir-build"))


def build_elixir_release(build: Path) -> Path:
    """Build the test app with `MIX_ENV=prod mix release`; returns the unpacked tree."""
    src = build / "src"
    shutil.copytree(APP_SRC, src, ignore=shutil.ignore_patterns("_build", "deps"))
    env = {**os.environ, "MIX_ENV": "prod", "MIX_HOME": str(build / "mix-home")}
    proc = subprocess.run(["mix", "release", "--overwrite", "--quiet"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tree = build / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-xzf", str(src / "_build" / "prod" / "bgapp-0.1.0.tar.gz"), "-C",
                    str(tree)], check=True)
    return tree


def elixir_artifact(project: Project, tree: Path, version: str, *, fail_migration: bool = False) -> Path:
    """The release with a VERSION file (what the app reports) as artifacts/sample-V.tar.gz."""
    (tree / "VERSION").write_text(version + "\n")
    marker = tree / "FAIL_MIGRATION"
    if fail_migration:
        marker.write_text("yes\n")
    dest = project.dir / "artifacts" / f"sample-{version}.tar.gz"
    dest.parent.mkdir(exist_ok=True)
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    marker.unlink(missing_ok=True)
    return dest


def elixir_config(project: Project, *, node_names: bool = True) -> None:
    env = {"MIGRATIONS_FILE": "{deploy_to}/migrations.log"}
    if node_names:  # what the elixir preset sets
        env.update(RELEASE_NODE="{app}_{color}", RELEASE_TMP="{slot_dir}/tmp")
    project.extra_run = {
        "command": None, "start": "bin/bgapp daemon", "stop": "bin/bgapp stop",
        "migrate": "bin/bgapp eval 'Bgapp.Release.migrate()'", "console": "bin/bgapp remote",
        "health_timeout": 20, "stop_timeout": 15, "env": env,
    }
    project.write_config()


@pytest.fixture
def ex(project: Project, elixir_release: Path) -> Iterator[Project]:
    elixir_config(project)
    yield project
    # epmd, started by the first node, outlives the nodes: stop it (and any stray BEAM) by pid.
    for pid in _pids_under(project.deploy_to):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids_under(path: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path) in os.readlink(proc / "exe") or str(path) in (proc / "cmdline").read_text():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def deploy(p: Project, tree: Path, version: str, *args: str, check: bool | int = True,
           fail_migration: bool = False) -> subprocess.CompletedProcess[str]:
    elixir_artifact(p, tree, version, fail_migration=fail_migration)
    return p.bg("deploy", "--version", version, *args, check=check)


def body(p: Project) -> str:
    return p.answer().body


def test_three_deploys_of_a_release_as_two_nodes(ex: Project, elixir_release: Path) -> None:
    p = ex
    p.bg("setup")
    out = deploy(p, elixir_release, "1.0.0")
    assert "migrated 1.0.0" in out.stderr  # migrate ran before the switch
    assert body(p).startswith("hello from 1.0.0 (blue) node testapp_blue@")
    deploy(p, elixir_release, "2.0.0")
    assert body(p).startswith("hello from 2.0.0 (green) node testapp_green@")
    st = p.status()
    assert st["slots"]["blue"]["healthy"] and st["slots"]["green"]["healthy"]  # two nodes
    blue_beam = st["slots"]["blue"]["pid"]
    started = time.monotonic()
    out = deploy(p, elixir_release, "3.0.0")
    # `bin/bgapp stop` closes the port quickly, but the BEAM exits later: the deploy waited.
    assert "blue stopped; port" in out.stderr
    assert not Path(f"/proc/{blue_beam}").exists()
    assert body(p).startswith("hello from 3.0.0 (blue) node testapp_blue@")
    assert time.monotonic() - started < 60
    migrations = (p.deploy_to / "migrations.log").read_text().splitlines()
    assert migrations == ["migrated 1.0.0 colour=blue", "migrated 2.0.0 colour=green",
                          "migrated 3.0.0 colour=blue"]
    # The release's own log (under RELEASE_TMP) is what `logs` shows for a daemon.
    out = p.bg("logs", "-n", "50")
    assert "bgapp 3.0.0 (blue) listening" in out.stdout
    out = p.bg("logs", "--color", "green", "-n", "50")
    assert "bgapp 2.0.0 (green) listening" in out.stdout
    p.bg("rollback")
    assert body(p).startswith("hello from 2.0.0 (green)")


def test_missing_node_name_is_caught_and_explained(ex: Project, elixir_release: Path) -> None:
    p = ex
    elixir_config(p, node_names=False)
    p.extra_run["health_timeout"] = 6
    p.write_config()
    p.bg("setup")
    deploy(p, elixir_release, "1.0.0")
    out = deploy(p, elixir_release, "2.0.0", check=5)
    assert "seems to be in use by another Erlang node" in out.stderr
    assert 'RELEASE_NODE = "{app}_{color}"' in out.stderr
    assert body(p).startswith("hello from 1.0.0 (blue)")


def test_failed_migration_means_no_switch(ex: Project, elixir_release: Path) -> None:
    p = ex
    p.bg("setup")
    deploy(p, elixir_release, "1.0.0")
    out = deploy(p, elixir_release, "2.0.0", check=1, fail_migration=True)
    assert "migration failed on purpose" in out.stderr
    assert "migrate failed" in out.stderr
    assert body(p).startswith("hello from 1.0.0 (blue)")
    # `bluegreen migrate` runs it again in the idle slot, by hand.
    out = p.bg("migrate", check=1)
    assert "migration failed on purpose" in out.stderr
    deploy(p, elixir_release, "2.0.1", "--no-promote")
    out = p.bg("migrate", "--color", "green")
    assert "migrated 2.0.1" in out.stderr
    assert (p.deploy_to / "migrations.log").read_text().count("migrated 2.0.1 colour=green") == 2


def test_console_attaches_to_the_slot_node(ex: Project, elixir_release: Path) -> None:
    p = ex
    p.bg("setup")
    deploy(p, elixir_release, "1.0.0")
    deploy(p, elixir_release, "2.0.0")
    pids = {c: p.status()["slots"][c]["pid"] for c in ("blue", "green")}
    for colour, version in (("green", "2.0.0"), ("blue", "1.0.0")):
        args = [] if colour == "green" else ["--color", "blue"]  # default: the live one
        child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "console", *args], cwd=str(p.dir),
                              env={**os.environ, "HOME": str(p.home), "TERM": "xterm"},
                              encoding="utf-8", timeout=30)
        try:
            child.expect(rf"iex\([^)]*testapp_{colour}@[^)]*\)\d+>")
            # Evaluated on the slot's running node: its name, its OS pid (the process that
            # listens on the slot's port) and the version it runs.
            child.sendline('IO.puts("answer=#{node()}/#{System.pid()}/#{Bgapp.version()}")')
            child.expect(rf"answer=testapp_{colour}@[^/\s]+/{pids[colour]}/{version}\r\n")
        finally:
            child.terminate(force=True)
    # The nodes are still serving.
    assert body(p).startswith("hello from 2.0.0 (green)")
    assert p.status()["slots"]["blue"]["healthy"]
