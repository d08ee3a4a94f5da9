"""Power cuts on real systemd servers (see tests/systemd_host.py): after a boot the live
release serves again, a deploy cut at any step converges when re-run, and the HAProxy kind
keeps its live colour."""

from __future__ import annotations

import time
from pathlib import Path


from conftest import get
from systemd_host import Site, SystemdLab, lab  # noqa: F401 (fixture)
from test_faults import run_until


def two_deploys(lab: SystemdLab, project: Path) -> Site:
    """A new server, set up, with 1.0.0 deployed to blue and 2.0.0 live on green."""
    host = lab.add()
    host.boot()
    site = Site(lab, host, project)
    site.bg("setup")
    site.deploy("1.0.0")
    site.deploy("2.0.0")
    return site


def test_power_cut_after_two_deploys_serves_the_live_release_on_boot(
        lab: SystemdLab, tmp_path: Path) -> None:
    site = two_deploys(lab, tmp_path / "project")
    host = site.host
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")

    host.power_cut()
    assert site.answer().status == 0  # the server is off
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and site.answer().version != "2.0.0":
        time.sleep(0.05)
    answer = site.answer()
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    status = site.status()
    assert status["live"] == "green" and status["slots"]["blue"]["healthy"] is True
    site.bg("rollback")  # the idle colour came back too: rollback is instant
    assert site.answer().version == "1.0.0"

    # A colour that `stop` stopped stays stopped after a reboot.
    site.bg("stop", "green")
    host.power_cut()
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and site.answer().version != "1.0.0":
        time.sleep(0.05)
    assert site.answer().version == "1.0.0"
    assert site.unit("green", "ActiveState") == "inactive"


def deploy_until(site: Site, version: str, marker: str) -> str:
    """Start `bluegreen deploy` of ``version`` and cut the server's power as soon as the
    deploy prints ``marker``; returns what it printed (it ends with a lost connection)."""
    site.artifact(version)
    status, seen = run_until(site, marker, ["--version", version],  # type: ignore[arg-type]
                             lambda proc: site.host.power_cut())
    # The connection was lost: exit 3, or 1 during the switch (nothing switched elsewhere),
    # saying the switch may be half done there.
    assert status == 3 or (status == 1 and "may be half done" in seen), seen
    return seen


# The step lines of a deploy to a server whose idle slot runs the release before.
POWER_CUT_STEPS = ["uploading", "unpacking", "draining", "stopping", "starting", "is healthy",
                   "switching"]


def test_power_cut_at_each_deploy_step_boots_serving_and_rerun_converges(
        lab: SystemdLab, tmp_path: Path) -> None:
    site = two_deploys(lab, tmp_path / "project")
    host = site.host
    live = ("green", "2.0.0")
    for n, marker in enumerate(POWER_CUT_STEPS):
        version = f"3.{n}.0"
        seen = deploy_until(site, version, marker)
        host.boot()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and site.answer().version is None:
            time.sleep(0.05)
        answer = site.answer()
        # After the boot the site serves: the live release, or (cut mid-switch) the new one.
        # The deploy runs on while the power is being cut: it may have reached the switch
        # (it says so first) even when cut at an earlier step.
        served = (answer.colour, answer.version)
        assert served == live or ("switching" in seen and served[1] == version), (
            marker, served, seen)
        status = site.status()
        assert status["live"] == answer.colour and status["proxy_answer"] == answer.colour
        # The lock of the run that died is reported as such, and a re-run finishes the job.
        out = site.deploy(version, check=False)
        if out.returncode == 4:
            assert "locked by" in out.stderr
            site.bg("unlock")
            out = site.deploy(version, check=False)
        assert out.returncode == 0, (marker, out.stderr)
        answer = site.answer()
        assert answer.version == version, (marker, answer)
        assert site.status()["slots"][answer.colour]["unit"]["enabled"] is True
        live = (answer.colour or "", version)


def test_haproxy_kind_on_a_systemd_server_survives_a_power_cut(
        lab: SystemdLab, tmp_path: Path) -> None:
    """The system HAProxy (haproxy.service, conf.d loaded through /etc/default/haproxy):
    setup reloads it with `systemctl reload haproxy`, the switch goes through its runtime
    API, and after a power cut it serves the live colour from the map file."""
    host = lab.add()
    (host.upper / "etc" / "systemd" / "system" / "haproxy.service").unlink()  # unmasked
    (host.upper / "etc" / "haproxy" / "conf.d").mkdir(parents=True)
    (host.upper / "etc" / "default").mkdir()
    (host.upper / "etc" / "default" / "haproxy").write_text('EXTRAOPTS="-f /etc/haproxy/conf.d"\n')
    host.boot()
    assert host.exec("systemctl", "is-active", "haproxy").stdout.strip() == "active"
    site = Site(lab, host, tmp_path / "project")
    site.proxy = {"kind": "haproxy", "listen": "8080", "reload": ""}
    site.write_config()
    site.bg("setup")
    site.deploy("1.0.0")
    pid = host.exec("systemctl", "show", "-p", "MainPID", "--value", "haproxy").stdout.strip()
    site.deploy("2.0.0")
    answer = get(8080, address=host.address)
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    # The switch went through the runtime API: the same HAProxy, not restarted.
    assert host.exec("systemctl", "show", "-p", "MainPID", "--value",
                     "haproxy").stdout.strip() == pid
    host.power_cut()
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and get(8080, address=host.address).version != "2.0.0":
        time.sleep(0.05)
    answer = get(8080, address=host.address)
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    site.bg("rollback")
    assert get(8080, address=host.address).version == "1.0.0"
