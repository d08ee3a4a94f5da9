"""docs/ci.md's CI jobs, run as written: each job's script lines (the GitHub Actions steps'
`run`, with their `env`; the GitLab job's `script`, in one shell) against a real sshd and
nginx, with the SSH key, known_hosts and the app's secrets coming from the environment as
the CI's secrets would. Only the line that installs bluegreen is left out (it is
installed here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

from conftest import Project, get

CI_DOC = Path(__file__).resolve().parent.parent / "docs" / "ci.md"
INSTALL = re.compile(r"^(pipx|pip) install bluegreen$")
SECRETS = {"DATABASE_URL": "postgres://app:Pw-0c1e5d@db/app", "SECRET_KEY": "sk-8f3e1a9b77"}


def _blocks(title: str) -> str:
    """The yaml block under the ``## title`` heading of docs/ci.md."""
    section = CI_DOC.read_text().split(f"## {title}\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def github_steps() -> list[tuple[dict[str, str], str]]:
    """Each step's (env, run script), in order, from the workflow in docs/ci.md."""
    steps: list[tuple[dict[str, str], str]] = []
    env: dict[str, str] = {}
    lines = _blocks("GitHub Actions").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^\s+- (name|uses):", line):
            env = {}
        if re.match(r"^\s+env:$", line):
            indent = len(line) - len(line.lstrip()) + 2
            i += 1
            while i < len(lines) and len(lines[i]) - len(lines[i].lstrip()) == indent:
                key, _, value = lines[i].strip().partition(": ")
                env[key] = value
                i += 1
            continue
        run = re.match(r"^(\s+)run: (.*)$", line)
        if run:
            if run.group(2) == "|":
                indent = len(run.group(1)) + 2
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) >= indent):
                    body.append(lines[i][indent:])
                    i += 1
                steps.append((env, "\n".join(body)))
                continue
            steps.append((env, run.group(2)))
        i += 1
    return steps


def gitlab_script() -> list[str]:
    """The deploy job's `script` lines."""
    block = _blocks("GitLab CI").split("  script:\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if not line.startswith("    - "):
            break
        lines.append(line[len("    - "):])
    return lines


def _secret(value: str, secrets: dict[str, str]) -> str:
    """``${{ secrets.NAME }}`` as GitHub fills it in."""
    return re.sub(r"\$\{\{ secrets\.([A-Z_]+) \}\}", lambda m: secrets[m.group(1)], value)


def test_the_ci_recipes_run_as_written_against_a_real_server(ssh_project: Project,
                                                              tmp_path: Path) -> None:
    p = ssh_project
    assert p.sshd is not None
    # The job's machine: a HOME with no SSH files yet, bluegreen on PATH.
    bin_dir = tmp_path / "ci-bin"
    bin_dir.mkdir()
    program = bin_dir / "bluegreen"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m bluegreen "$@"\n')
    program.chmod(0o755)
    # The config as a project keeps it: hosts by address, the default ~/.ssh files.
    p.host_override = {"identity_file": None, "known_hosts": None}
    # The app and its build, as the project's repository holds them (the job builds it).
    app = p.dir / "app"
    app.mkdir()
    (app / "app.py").write_text(resources.files("bluegreen.demo").joinpath("app.py").read_text())
    p.write_config(release={"build": "echo {version} > app/VERSION && mkdir -p artifacts && "
                                     "tar -czf artifacts/sample-{version}.tar.gz -C app .",
                            "artifact": "artifacts/sample-{version}.tar.gz"},
                   run={"command": "exec python3 app.py", "health_timeout": 8,
                        "stop_timeout": 5, "drain_timeout": 2,
                        "secrets": {name: {"env": name} for name in SECRETS}},
                   canary={"min_requests": 0})
    ssh_dir = p.home / ".ssh"  # the operator's machine, for the setup done beforehand
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "id_ed25519").write_text(p.sshd.client_key.read_text())
    (ssh_dir / "id_ed25519").chmod(0o600)
    (ssh_dir / "known_hosts").write_text(p.sshd.known_hosts.read_text())
    p.bg("setup")
    assert not (p.dir / "artifacts").exists()
    ci_secrets = {"DEPLOY_SSH_KEY": p.sshd.client_key.read_text().strip(),
                  "DEPLOY_KNOWN_HOSTS": p.sshd.known_hosts.read_text().strip(), **SECRETS}
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path / "ci-home"),
            "LANG": "C.UTF-8", "NO_COLOR": "1", "CANARY_STEP": "1s"}
    (tmp_path / "ci-home").mkdir()

    # GitHub Actions: each step a `bash -e` of its `run`, with its `env`.
    sha = "4c1d2e3f5a6b7c8d9e0f4c1d2e3f5a6b7c8d9e0f"
    outputs = []
    skipped = []
    for env, script in github_steps():
        if INSTALL.match(script.strip()):
            skipped.append(script)
            continue
        step_env = {**base, "GITHUB_SHA": sha,
                    **{k: _secret(v, ci_secrets) for k, v in env.items()}}
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=p.dir, env=step_env,
                              capture_output=True, text=True, timeout=300)
        failed = [line for line in proc.stdout.splitlines() if "FAIL" in line]
        assert proc.returncode == 0, (script, failed or proc.stdout, proc.stderr)
        outputs.append(proc.stdout + proc.stderr)
    assert skipped == ["pipx install bluegreen"]
    result = json.loads((p.dir / "deploy.json").read_text())
    assert result["ok"] and result["release"].startswith(sha[:12])
    assert get(p.nginx.port).version == sha[:12]
    # The secrets reached the slot, and never the job's log.
    pid = p.status()["slots"][p.status()["live"]]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert all(f"{k}={v}".encode() in environ for k, v in SECRETS.items())
    assert not [v for v in SECRETS.values() if any(v in out for out in outputs)]

    # GitLab CI: the script in one shell, with the variables in the environment.
    (tmp_path / "ci-home" / ".ssh").rename(tmp_path / "previous-ssh")  # a new job's machine
    short = "9e0f4c1d"
    script = [line for line in gitlab_script() if not INSTALL.match(line)]
    assert len(script) == len(gitlab_script()) - 1
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(script)], cwd=p.dir,
                          env={**base, **ci_secrets, "CI_COMMIT_SHORT_SHA": short},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads((p.dir / "deploy.json").read_text())["release"].startswith(short)
    assert get(p.nginx.port).version == short
    assert not [v for v in SECRETS.values() if v in proc.stdout + proc.stderr]
