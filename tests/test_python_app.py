"""The python preset, as `bluegreen init --preset python` writes it, deploying a real
gunicorn (from PyPI) serving a WSGI app."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

from conftest import BLUEGREEN, Project, to_toml


def test_python_preset_deploys_a_real_gunicorn_app(project: Project) -> None:
    """`init --preset python`, adapted only where this test machine differs."""
    p = project
    subprocess.run([*BLUEGREEN, "init", "--preset", "python", "--app", "testapp", "--force"],
                   cwd=p.dir, check=True, capture_output=True)
    data = tomllib.loads((p.dir / "bluegreen.toml").read_text())
    reference = tomllib.loads(p.write_config().read_text())
    data["run"]["command"] = data["run"]["command"].replace("python3", sys.executable)
    data["release"] = {"version": "1.0.0", "artifact": "artifacts/web-{version}.tar.gz"}
    data["slots"], data["proxy"], data["hosts"] = (reference["slots"], reference["proxy"],
                                                   reference["hosts"])
    (p.dir / "bluegreen.toml").write_text(to_toml(data))
    p.bg("setup")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        src = p.dir / "web" / version
        (src / "testapp").mkdir(parents=True)
        (src / "testapp" / "__init__.py").write_text("")
        (src / "testapp" / "wsgi.py").write_text(
            (Path(__file__).parent / "apps" / "python" / "wsgi.py").read_text())
        (src / "VERSION").write_text(version)
        dest = p.dir / "artifacts" / f"web-{version}.tar.gz"
        dest.parent.mkdir(exist_ok=True)
        with tarfile.open(dest, "w:gz") as tar:
            for child in src.iterdir():
                tar.add(child, arcname=child.name)
        p.bg("deploy", "--version", version)
        a = p.answer()
        assert a.status == 200 and a.body.startswith(f"hello from {version} ")
    st = p.status()
    assert st["slots"]["green"]["healthy"] and st["live"] == "blue"
    assert "gunicorn" in Path(f"/proc/{st['slots']['blue']['pid']}/cmdline").read_text()
