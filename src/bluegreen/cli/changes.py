"""The commands that change hosts (and `init`, `check`, `build` before them), in the order
a first deploy uses them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bluegreen.cli.app import (COLOURS, F, State, checked, common, dry_run_option,
                               emit_result, json_data, json_events, load, lock_wait_option,
                               main, run, to_colour)
from bluegreen.cli.lazy import artifact, releases, reports, setting_up, views, workflow
from bluegreen.config import presets

if TYPE_CHECKING:
    from bluegreen.commands.context import Context


@main.command(help="Write a commented bluegreen.toml for a kind of app.")
@click.option("--preset", type=click.Choice(presets.NAMES), default="generic", show_default=True)
@click.option("--app", "app_name", help="App name (default: from the current directory).")
@click.option("-c", "--config", "config", default="bluegreen.toml", show_default=True,
              metavar="PATH", help="Where to write the file.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(preset: str, app_name: str | None, config: str, force: bool) -> None:
    path = Path(config)
    if path.exists() and not force:
        click.echo(f"error: {path} exists; pass --force to overwrite it", err=True)
        sys.exit(2)
    name = app_name or presets.app_name_from(Path.cwd().name)
    try:
        text = presets.render(preset, name)
    except ValueError as exc:
        click.echo(f"error: --app {exc}", err=True)
        sys.exit(2)
    path.write_text(text)
    click.echo(f"wrote {path} ({preset} preset, app {name!r}); edit it, then run "
               "`bluegreen check`")


@main.command(help="Validate the config, check the local build command (or artifact), connect "
                   "to every host, verify the proxy (and that proxy.listen is free or its "
                   "own), paths and slot ports, say which "
                   "supervisor runs the slots, and what `setup` would create. Changes nothing.")
@json_data
@common
def check(state: State, json_out: bool) -> None:
    state.out.quiet = json_out
    ctx = load(state)
    items = run(state, lambda: reports.check(ctx.cfg, ctx.hosts, ctx.out))
    failed = [i for i in items if i.ok is False]
    if json_out:
        def rows(host: str) -> list[dict[str, Any]]:
            return [{"item": i.item, "ok": i.ok, "detail": i.detail} for i in items
                    if i.host == host]

        emit_result([{"name": h, "items": rows(h)} for h in dict.fromkeys(
            i.host for i in items if i.host != reports.LOCAL)], ok=not failed,
            local=rows(reports.LOCAL))
    else:
        views.print_check(items)
    if any(i.item == "connect" for i in failed):
        sys.exit(3)
    if failed:
        sys.exit(1)
    if not json_out:
        click.echo("config is valid and every host is ready for `bluegreen setup`")


@main.command(help="Create the layout under deploy_to and write the proxy's files (nginx: both "
                   "site files, and the link to blue if there is none; haproxy: the config "
                   "file, and the map file with blue if there is none), install the systemd "
                   "unit (slots under systemd), test and reload the proxy, verify through "
                   "it. Refuses (exit 1, nothing written) slot ports held by anything but "
                   "this app's slots; a failed nginx setup puts its files and link back.")
@click.option("--print-sudoers", is_flag=True,
              help="Print the sudoers drop-in a non-root deploy user (hosts[].sudo = true) "
                   "needs: exactly the commands bluegreen runs as root, with the full paths "
                   "found on the (first) host. Changes nothing.")
@click.option("--print-root-files", is_flag=True,
              help="Print a script an admin runs as root once (with sudo = true): it "
                   "installs the files whose content runs as root (the systemd unit, the "
                   "nginx site files or HAProxy config). Changes nothing.")
@lock_wait_option
@json_events
@dry_run_option
@common
def setup(state: State, json_out: bool, print_sudoers: bool, print_root_files: bool) -> None:
    ctx = load(state)
    if print_root_files:
        click.echo(run(state, lambda: setting_up.print_root_files(ctx)), nl=False)
        return
    if print_sudoers:
        click.echo(run(state, lambda: setting_up.print_sudoers(ctx)), nl=False)
        return
    run(state, lambda: setting_up.setup(ctx))
    if json_out:
        emit_result([{"name": h.label} for h in ctx.hosts], out=ctx.out)


@main.command(help="Run release.build locally and report the artifact and its sha256.")
@click.option("--version", "version", help="Version to build (default: from the config).")
@json_data
@common
def build(state: State, json_out: bool, version: str | None) -> None:
    ctx = load(state)

    async def go() -> artifact.Artifact:
        return artifact.prepare(ctx.cfg, version=version, artifact=None, skip_build=False,
                                echo=lambda line: ctx.out.step(None, line),
                                output=lambda line: ctx.out.debug(None, line),
                                warn=lambda line: ctx.out.warn(None, line))

    art = run(state, go)
    if json_out:
        emit_result([], artifact=str(art.path), version=art.version, sha256=art.sha256,
                    release=art.release_id)
        return
    click.echo(f"{art.path}\nversion {art.version}\nsha256 {art.sha256}\nrelease {art.release_id}")


def canary_options(fn: F) -> F:
    """--canary [STEPS], --step, --watch, --no-sticky (deploy and promote)."""
    fn = click.option("--no-sticky", "no_sticky", is_flag=True,
                      help="Canary by plain weights: each request picks a colour (default: "
                           "a client keeps its colour, by a cookie the proxy sets).")(fn)
    fn = click.option("--watch", "watch", metavar="DURATION", callback=checked("seconds"),
                      help="After the full switch, judge the new colour for this long (e.g. "
                           "60s) and roll back automatically if it is bad (exit 5).")(fn)
    fn = click.option("--step", "step", metavar="DURATION", callback=checked("seconds"),
                      help="How long each canary step is judged (default: [canary] step).")(fn)
    fn = click.option("--canary", "canary", is_flag=False, flag_value="", default=None,
                      metavar="STEPS", callback=checked("percent_steps"),
                      help="Switch in steps: the new colour's share of requests, e.g. "
                           "10,50,100 (default: [canary] steps), each judged against the old "
                           "colour on the proxy's own numbers (errors, latency); a bad step "
                           "sends every request back to the old colour (exit 5).")(fn)
    return fn


def canary_plan(ctx: Context, canary: str | None, step: str | None,
                watch: str | None, no_sticky: bool) -> Any:
    """The canary.Plan the options ask for (None: a plain switch)."""
    from bluegreen.rollout.canary import Plan

    if step is not None and canary is None:
        raise click.UsageError("--step is for a canary: add --canary")
    if no_sticky and canary is None:
        raise click.UsageError("--no-sticky is for a canary: add --canary")
    return Plan.of(ctx.cfg, canary, step, watch, not no_sticky)


@main.command(help="Lock, upload (skipped if already there), unpack, drain and stop the idle "
                   "slot, start the release there, wait for health, run migrate if set, "
                   "promote (unless --no-promote; with --canary in judged steps), record "
                   "history, unlock.")
@click.option("--artifact", "artifact_path", metavar="PATH",
              help="Deploy this .tar.gz instead of building.")
@click.option("--version", "version", help="Release version (default: from the config).")
@click.option("--no-promote", is_flag=True, help="Start and health-check, but do not switch.")
@click.option("--skip-build", is_flag=True, help="Do not run release.build.")
@canary_options
@lock_wait_option
@json_events
@dry_run_option
@common
def deploy(state: State, json_out: bool, artifact_path: str | None, version: str | None,
           no_promote: bool, skip_build: bool, canary: str | None, step: str | None,
           watch: str | None, no_sticky: bool) -> None:
    ctx = load(state)
    plan = canary_plan(ctx, canary, step, watch, no_sticky)
    if plan is not None and no_promote:
        raise click.UsageError("--canary and --watch switch traffic; --no-promote does not")

    def prepare() -> artifact.Artifact:
        art = artifact.prepare(ctx.cfg, version=version, artifact=artifact_path,
                               skip_build=skip_build, echo=lambda line: ctx.out.step(None, line),
                               output=lambda line: ctx.out.debug(None, line),
                               warn=lambda line: ctx.out.warn(None, line))
        ctx.out.step(None, f"release {art.release_id} ({art.path.name})")
        return art

    async def go() -> workflow.DeployResult:
        # A build runs once the hosts are connected and no lock is held (a running
        # deploy may be uploading what it would overwrite); a given artifact is read now.
        builds = artifact_path is None and not skip_build and bool(ctx.cfg.release.build)
        return await workflow.deploy(ctx, prepare if builds else prepare(),
                                     promote=not no_promote, plan=plan)

    result = run(state, go)
    if json_out:
        emit_result([{"name": h, "color": c.value} for h, c in result.targets.items()],
                    out=ctx.out, release=result.release, version=result.version,
                    promoted=result.promoted)
        return
    dry = state.out.dry_run  # a dry run says what it would do, never "live"
    for host, colour in result.targets.items():
        what = ("would be live" if dry else "live") if result.promoted else (
            "would be started, not promoted" if dry
            else "started, not promoted (run `bluegreen promote`)")
        click.echo(f"{host}: {result.release} on {colour}: {what}")


@main.command(help="Health-check the target colour on every host, switch the proxy to it, "
                   "and verify through the proxy. Refused when that colour holds different "
                   "releases on different hosts. Without COLOUR: the idle colour, only when "
                   "it holds a release started after the live one (e.g. `deploy "
                   "--no-promote`) that no rollback sent traffic away from, so a repeated "
                   "promote never goes back and never undoes a rollback; to go back, "
                   "`rollback` or name the colour. --canary: in judged steps.")
@click.argument("colour", type=COLOURS, required=False)
@canary_options
@lock_wait_option
@json_events
@dry_run_option
@common
def promote(state: State, json_out: bool, colour: str | None, canary: str | None,
            step: str | None, watch: str | None, no_sticky: bool) -> None:
    ctx = load(state)
    plan = canary_plan(ctx, canary, step, watch, no_sticky)
    targets = run(state, lambda: workflow.promote(ctx, to_colour(colour), plan=plan))
    if json_out:
        emit_result([{"name": h, "live": c.value} for h, c in targets.items()],
                    out=ctx.out, live={h: c.value for h, c in targets.items()})
        return
    for host, c in targets.items():
        click.echo(f"{host}: live {'would be' if state.out.dry_run else 'is'} {c}")


@main.command(help="Promote the previously live colour (it must still be running and "
                   "healthy, and hold a release started before the live one, so a repeated "
                   "rollback changes nothing); says which release it goes back to. With --to: "
                   "start an older release still kept on the hosts on the idle colour and "
                   "promote it once healthy. --list shows the kept releases (where each runs, "
                   "its age, the one a plain rollback would choose); --pick, on a terminal, "
                   "asks which one to go back to.")
@click.option("--to", "to", metavar="RELEASE", help="A kept release: its id "
              "(`history`, `status`, `--list`) or a version (its newest kept build).")
@click.option("--list", "list_", is_flag=True, help="List the releases kept on each host, "
              "newest first: version, age (since its start, or its upload), where it runs "
              "(live, idle, on disk only), and the one a plain rollback would choose. "
              "Changes nothing.")
@click.option("--pick", is_flag=True, help="On a terminal: list the kept releases and roll "
              "back to the one chosen (as --to RELEASE).")
@lock_wait_option
@json_events
@dry_run_option
@common
def rollback(state: State, json_out: bool, to: str | None, list_: bool, pick: bool) -> None:
    if sum((to is not None, list_, pick)) > 1:
        raise click.UsageError("--to, --list and --pick: choose one")
    if pick and (json_out or not sys.stdin.isatty()):
        raise click.UsageError("--pick asks on a terminal; without one (or with --json), "
                               "name the release: `rollback --list`, then `rollback --to "
                               "RELEASE`")
    if list_ and json_out:
        state.out.quiet = True  # stdout is the data; no progress to follow
    ctx = load(state)
    if list_ or pick:
        kept = run(state, lambda: releases.kept(ctx))
        data = {host: [k.to_json() for k in rows] for host, rows in kept.items()}
        if list_:
            if json_out:
                emit_result([{"name": h, "releases": r} for h, r in data.items()])
            else:
                views.print_releases(data)
            return
        to = choose_release(data)
    if to is not None:
        result = run(state, lambda: workflow.rollback_to(ctx, to))
        targets = result.targets
    else:
        targets = run(state, lambda: workflow.rollback(ctx))
    if json_out:
        emit_result([{"name": h, "live": c.value} for h, c in targets.items()],
                    out=ctx.out, live={h: c.value for h, c in targets.items()})
        return
    for host, c in targets.items():
        click.echo(f"{host}: would roll back; live would be {c}" if state.out.dry_run
                   else f"{host}: rolled back; live is {c}")


def choose_release(data: dict[str, list[dict[str, Any]]]) -> str:
    """`rollback --pick`: the kept releases (those not live on the first host) numbered, and
    the one the user chooses."""
    rows = next(iter(data.values()), [])
    picks = [r["release"] for r in rows if r["where"] != "live"]
    if not picks:
        click.echo("error: no kept release to roll back to (only the live one is kept)",
                   err=True)
        sys.exit(1)
    views.print_releases(data, picks)
    default = next((i + 1 for i, rid in enumerate(picks)
                    if any(r["release"] == rid and r["rollback_target"] for r in rows)), None)
    number: int = click.prompt("Roll back to which release", type=click.IntRange(
        1, len(picks)), default=default)
    return str(picks[number - 1])
