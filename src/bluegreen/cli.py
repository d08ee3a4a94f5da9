"""Command line: parse arguments, call the workflow, render output, map errors to exit codes.

No SSH and no nginx here."""

from __future__ import annotations

import functools
import importlib
import json
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Coroutine, NoReturn, TypeVar

import click

from bluegreen import __version__, presets
from bluegreen.errors import BlueGreenError

if TYPE_CHECKING:
    from bluegreen import artifact, operations, reference, reports, views, workflow
    from bluegreen.config import Colour
    from bluegreen.output import Reporter
else:
    class _Later(ModuleType):
        """A module imported when first used: `bluegreen --help` and commands that need
        no host skip pydantic, rich, asyncssh and Jinja2 (~0.2 s)."""

        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.__dict__["_name"] = name

        def __getattr__(self, attr: str) -> Any:
            return getattr(importlib.import_module(self.__dict__["_name"]), attr)

    artifact = _Later("bluegreen.artifact")
    operations = _Later("bluegreen.operations")
    reference = _Later("bluegreen.reference")
    reports = _Later("bluegreen.reports")
    workflow = _Later("bluegreen.workflow")
    views = _Later("bluegreen.views")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """
Exit codes: 0 done; 1 failed, live traffic left as it was; 2 usage or config error;
3 cannot connect (or host key unknown/changed); 4 lock held by another run;
5 the new release did not become healthy and was not promoted (or a canary or
watch judged it bad: every request went back to the old colour).
"""

COLOURS = click.Choice(["blue", "green"])
# The sections of `bluegreen docs` (reference.SECTIONS; a test keeps them equal).
DOC_SECTIONS = ("", "release", "run", "slots", "deploy", "canary", "proxy", "hooks",
               "hosts", "load_balancers")


def to_colour(value: str | None) -> Colour | None:
    from bluegreen.config import Colour

    return Colour(value) if value else None


class State:
    def __init__(self, config: str | None, hosts: tuple[str, ...], verbose: bool,
                 json_out: bool = False, events: bool = False,
                 destination: str | None = None) -> None:
        self.config_path = config
        self.destination = destination
        self.host_names = hosts
        self.verbose = verbose
        # --json on a command that changes things: progress as JSON lines on stderr, the
        # result (or the error) as one JSON document on stdout.
        self.events = json_out and events
        from bluegreen.output import Reporter

        self.out: Reporter = Reporter(verbose=verbose, mode="json" if self.events else None)
        self.json = json_out

    def context(self) -> workflow.Context:
        from bluegreen.config import load_config

        cfg = load_config(self.config_path, self.destination)
        return workflow.make_context(cfg, self.out, self.host_names)


def _complete_hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --host: the host names of the config (-c, or ./bluegreen.toml)."""
    from bluegreen.config import load_config
    from bluegreen.errors import BlueGreenError

    try:
        cfg = load_config(ctx.params.get("config"), ctx.params.get("destination"))
    except BlueGreenError:
        return []
    return [h.label for h in [*cfg.hosts, *cfg.load_balancers] if h.label.startswith(incomplete)]


def common(fn: F) -> F:
    """The options every command takes: -c/--config, -d/--destination, --host, -v."""

    @click.option("-c", "--config", "config", metavar="PATH",
                  help="Config file (default: ./bluegreen.toml).")
    @click.option("-d", "--destination", "destination", metavar="NAME",
                  help="Merge bluegreen.NAME.toml (beside the config file) over it: tables "
                       "key by key, [[hosts]] replaced; e.g. -d staging.")
    @click.option("--host", "hosts", multiple=True, metavar="NAME",
                  help="Only this host (hosts[].name); repeatable.",
                  shell_complete=_complete_hosts)
    @click.option("-v", "--verbose", is_flag=True, help="Show each remote command and tracebacks.")
    @functools.wraps(fn)
    def wrapper(config: str | None, destination: str | None, hosts: tuple[str, ...],
                verbose: bool, **kw: Any) -> Any:
        events, data = getattr(wrapper, "events", False), getattr(wrapper, "data", False)
        dry = kw.pop("dry_run", False)
        state = State(config, hosts, verbose, kw.pop("json_out", False) and not dry, events,
                      destination)
        if dry:
            state.out.dry_run = True
            state.out.mode = "plain"  # every line, not a live table
        if events or data:
            kw["json_out"] = state.json
        result = fn(state, **kw)
        if dry:
            click.echo("dry run: nothing was changed on any host")
        return result

    return wrapper  # type: ignore[return-value]


def json_events(fn: F) -> F:
    """--json for a command that changes things."""
    fn.events = True  # type: ignore[attr-defined]
    return click.option("--json", "json_out", is_flag=True,
                        help="Progress as JSON lines on stderr; the result as one JSON "
                             "document on stdout.")(fn)


def dry_run_option(fn: F) -> F:
    """--dry-run: a command that changes hosts says what it would do, changing nothing
    (`common` takes the flag and sets the reporter's ``dry_run``)."""
    return click.option("--dry-run", "dry_run", is_flag=True,
                        help="Print each host's steps and the exact commands that would "
                             "change it (read-only checks still run; secrets masked); "
                             "change nothing. Exit 0.")(fn)


def json_data(fn: F) -> F:
    """--json for a command that prints data (`logs`: JSON lines)."""
    fn.data = True  # type: ignore[attr-defined]
    text = ('JSON lines on stdout, {"host", "color", "release", "line"} per log line.'
            if fn.__name__ == "logs" else "One JSON document on stdout.")
    return click.option("--json", "json_out", is_flag=True, help=text)(fn)


def run(state: State, coro_fn: Callable[[], Coroutine[Any, Any, T]], *,
        stop_on_interrupt: bool = False) -> T:
    """Run a workflow coroutine; turn bluegreen errors into ``error: ...`` and exit codes.
    ``stop_on_interrupt``: Ctrl-C is the normal way to end it (`logs -f`): exit 0, quietly."""
    import asyncio

    try:
        with state.out.session():
            return asyncio.run(coro_fn())
    except BlueGreenError as exc:
        fail(state, exc)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            sys.exit(0)
        state.out.error("interrupted; if a lock was left behind, `bluegreen unlock` clears it")
        sys.exit(130)


def fail(state: State, exc: BlueGreenError) -> NoReturn:
    if state.verbose:
        traceback.print_exc()
    state.out.error(exc.message)
    if state.events:
        emit_json({"schema": JSON_SCHEMA, "ok": False, "error": exc.message,
                   "exit_code": exc.exit_code,
                   "hosts": [{"name": exc.host, "error": exc.reason}] if exc.host else []})
    sys.exit(exc.exit_code)


def load(state: State) -> workflow.Context:
    """The validated config and the selected hosts (exit 2 on a bad config)."""
    try:
        return state.context()
    except BlueGreenError as exc:
        fail(state, exc)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# The version of every --json result's shape (docs/json.md); 2: `schema`, `ok` and `hosts`
# as a list of objects with `name` in every result.
JSON_SCHEMA = 2


def emit_result(hosts: list[dict[str, Any]], ok: bool = True, out: Reporter | None = None,
                **data: Any) -> None:
    """A --json result: ``{"schema", "ok", ...data, "hosts": [{"name", ...}, ...]}``; with
    ``out``, each host its ``round_trips`` (commands, uploads, connections, total)."""
    if out is not None:
        hosts = [{**h, "round_trips": out.round_trips[h["name"]]}
                 if h["name"] in out.round_trips else h for h in hosts]
    emit_json({"schema": JSON_SCHEMA, "ok": ok, **data, "hosts": hosts})


@click.group(help="Zero-downtime blue-green deploys to one or many Linux servers, switched "
                  "with nginx or HAProxy.\n\nOptions go after the command name: "
                  "`bluegreen deploy -c prod.toml`.\n" + EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="bluegreen")
def main() -> None:
    pass


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
    path.write_text(presets.render(preset, name))
    click.echo(f"wrote {path} ({preset} preset, app {name!r}); edit it, then run "
               "`bluegreen check`")


@main.command(help="Validate the config, check the local build command (or artifact), connect "
                   "to every host, verify the proxy, paths and slot ports, say which "
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
                   "unit (slots under systemd), test and reload the proxy.")
@click.option("--print-sudoers", is_flag=True,
              help="Print the sudoers drop-in a non-root deploy user (hosts[].sudo = true) "
                   "needs: exactly the commands bluegreen runs as root, with the full paths "
                   "found on the (first) host. Changes nothing.")
@click.option("--print-root-files", is_flag=True,
              help="Print a script an admin runs as root once (with sudo = true): it "
                   "installs the files whose content runs as root (the systemd unit, the "
                   "nginx site files or HAProxy config). Changes nothing.")
@json_events
@dry_run_option
@common
def setup(state: State, json_out: bool, print_sudoers: bool, print_root_files: bool) -> None:
    ctx = load(state)
    if print_root_files:
        click.echo(run(state, lambda: workflow.print_root_files(ctx)), nl=False)
        return
    if print_sudoers:
        click.echo(run(state, lambda: workflow.print_sudoers(ctx)), nl=False)
        return
    run(state, lambda: workflow.setup(ctx))
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
                                output=lambda line: ctx.out.debug(None, line))

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
    fn = click.option("--watch", "watch", metavar="DURATION",
                      help="After the full switch, judge the new colour for this long (e.g. "
                           "60s) and roll back automatically if it is bad (exit 5).")(fn)
    fn = click.option("--step", "step", metavar="DURATION",
                      help="How long each canary step is judged (default: [canary] step).")(fn)
    fn = click.option("--canary", "canary", is_flag=False, flag_value="", default=None,
                      metavar="STEPS",
                      help="Switch in steps: the new colour's share of requests, e.g. "
                           "10,50,100 (default: [canary] steps), each judged against the old "
                           "colour on the proxy's own numbers (errors, latency); a bad step "
                           "sends every request back to the old colour (exit 5).")(fn)
    return fn


def canary_plan(ctx: workflow.Context, canary: str | None, step: str | None,
                watch: str | None, no_sticky: bool) -> Any:
    """The canary.Plan the options ask for (None: a plain switch)."""
    from bluegreen.canary import Plan

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

    async def go() -> workflow.DeployResult:
        art = artifact.prepare(ctx.cfg, version=version, artifact=artifact_path,
                               skip_build=skip_build, echo=lambda line: ctx.out.step(None, line),
                               output=lambda line: ctx.out.debug(None, line))
        ctx.out.step(None, f"release {art.release_id} ({art.path.name})")
        return await workflow.deploy(ctx, art, promote=not no_promote, plan=plan)

    result = run(state, go)
    if json_out:
        emit_result([{"name": h, "color": c.value} for h, c in result.targets.items()],
                    out=ctx.out, release=result.release, version=result.version,
                    promoted=result.promoted)
        return
    for host, colour in result.targets.items():
        what = "live" if result.promoted else "started, not promoted (run `bluegreen promote`)"
        click.echo(f"{host}: {result.release} on {colour}: {what}")


@main.command(help="Health-check the target colour on every host, switch the proxy to it, "
                   "and verify through the proxy. Without COLOUR: the idle colour, only when "
                   "it holds a release started after the live one (e.g. `deploy "
                   "--no-promote`), so a repeated promote never goes back; to go back, "
                   "`rollback` or name the colour. --canary: in judged steps.")
@click.argument("colour", type=COLOURS, required=False)
@canary_options
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
        click.echo(f"{host}: live is {c}")


@main.command(help="Promote the previously live colour (it must still be running and "
                   "healthy); says which release it goes back to. With --to: start an older "
                   "release still kept on the hosts on the idle colour and promote it once "
                   "healthy.")
@click.option("--to", "to", metavar="RELEASE", help="A kept release: its id "
              "(`history`, `status`) or a version (its newest kept build).")
@json_events
@dry_run_option
@common
def rollback(state: State, json_out: bool, to: str | None) -> None:
    ctx = load(state)
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
        click.echo(f"{host}: rolled back; live is {c}")


@main.command(help="Per host: the live colour, what the proxy answers, and each slot's "
                   "release, version, port, pid, running and healthy.")
@json_data
@common
def status(state: State, json_out: bool) -> None:
    state.out.quiet = json_out
    ctx = load(state)
    data = run(state, lambda: reports.status(ctx.cfg, ctx.hosts, ctx.out))
    if json_out:
        emit_json({"schema": JSON_SCHEMA, "ok": not data["problems"] and all(
            h["reachable"] for h in [*data["hosts"], *data.get("load_balancers", [])]), **data})
    else:
        views.print_status(data)
    if any(not h["reachable"] for h in [*data["hosts"], *data.get("load_balancers", [])]):
        sys.exit(3)


@main.command(help="Drain and stop an idle slot (the live one is refused).")
@click.argument("colour", type=COLOURS)
@json_events
@dry_run_option
@common
def stop(state: State, json_out: bool, colour: str) -> None:
    ctx = load(state)
    target = to_colour(colour)
    assert target is not None  # click requires the argument
    run(state, lambda: workflow.stop(ctx, target))
    if json_out:
        emit_result([{"name": h.label} for h in ctx.hosts], out=ctx.out, stopped=colour)
        return
    click.echo(f"{colour} stopped")


@main.command(help="Deploy, promote, rollback, stop, prune and failure events, newest first.")
@click.option("-n", "limit", type=click.IntRange(min=1), help="Show at most N events.")
@json_data
@common
def history(state: State, json_out: bool, limit: int | None) -> None:
    state.out.quiet = json_out
    ctx = load(state)
    events = run(state, lambda: operations.read_history(ctx, limit))
    if json_out:
        names = list(dict.fromkeys(e["host"] for e in events))
        emit_result([{"name": n} for n in names], events=events)
        return
    views.print_history(events)


@main.command(help="Keep the N newest releases plus the blue and green slots' releases; delete "
                   "the rest.")
@click.option("--keep", type=click.IntRange(min=1), help="How many to keep (default: release.keep).")
@json_events
@dry_run_option
@common
def prune(state: State, json_out: bool, keep: int | None) -> None:
    ctx = load(state)
    removed = run(state, lambda: workflow.prune(ctx, keep or ctx.cfg.release.keep))
    if json_out:
        emit_result([{"name": h, "removed": r} for h, r in removed.items()], out=ctx.out,
                    removed=removed)
        return
    for host, rids in removed.items():
        click.echo(f"{host}: removed {len(rids)} release(s)" + (": " + " ".join(rids) if rids else ""))


@main.command(help="Run run.migrate with a slot's release, env and env_file (default: the idle "
                   "slot, where a deploy --no-promote left the new release).")
@click.option("--color", "colour", type=COLOURS, help="The slot (default: idle).")
@common
def migrate(state: State, colour: str | None) -> None:
    ctx = load(state)
    run(state, lambda: operations.migrate(ctx, to_colour(colour)))


@main.command(help="An interactive run.console (e.g. `bin/app remote`) in a pty, in a slot's "
                   "env (default: the live slot). Over SSH the pty is on the server.")
@click.option("--color", "colour", type=COLOURS, help="The slot (default: live).")
@common
def console(state: State, colour: str | None) -> None:
    ctx = load(state)
    sys.exit(run(state, lambda: operations.console(ctx, to_colour(colour))))


@main.command("exec", help="Run CMD ARGS... in a slot's release dir (default: the live "
                           "slot) with the slot's environment and secrets, e.g. `bluegreen "
                           "exec -- bin/rails runner 'p User.count'`; exits with CMD's "
                           "status. Standard input is passed on (`exec -- psql < dump.sql`).",
              context_settings={"allow_interspersed_args": False})
@click.option("--color", "colour", type=COLOURS, help="The slot (default: live).")
@click.option("--all-hosts", is_flag=True, help="On every selected host in turn (default: "
              "the first; choose one with --host). Exit status: the first that is not 0.")
@click.option("-i", "--interactive", is_flag=True, help="Give CMD a terminal on the host "
              "(a pty), as `console` does; one host only.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CMD ARGS...")
@common
def exec_(state: State, colour: str | None, all_hosts: bool, interactive: bool,
          command: tuple[str, ...]) -> None:
    ctx = load(state)
    sys.exit(run(state, lambda: operations.exec_command(
        ctx, to_colour(colour), list(command), all_hosts=all_hosts, pty=interactive)))


@main.command(help="Show a slot's log (default: the live slot): bluegreen's log of a run.command "
                   "app, plus the release's own log ($RELEASE_TMP/log) for a run.start app.")
@click.option("--color", "colour", type=COLOURS, help="The slot (default: live).")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines (Ctrl-C stops, with exit 0).")
@click.option("-n", "lines", type=click.IntRange(min=0), default=100, show_default=True,
              help="How many lines to show.")
@json_data
@common
def logs(state: State, colour: str | None, follow: bool, lines: int, json_out: bool) -> None:
    state.out.quiet = True
    ctx = load(state)
    run(state, lambda: operations.logs(ctx, to_colour(colour), lines, follow, json_out),
        stop_on_interrupt=follow)


@main.command(help="`maintenance on`: every proxy answers this app's requests with 503 and "
                   "a page (--message, or proxy.maintenance_page), except /deployment_id; "
                   "the slots keep running, deploys and promotes keep it on. `maintenance "
                   "off`: serve the app again. nginx: no reload; HAProxy: through the "
                   "runtime API. Recorded in history; `status` shows it.")
@click.argument("state_word", metavar="on|off", type=click.Choice(["on", "off"]))
@click.option("--message", metavar="TEXT", help="The page's text (default: \"Down for "
              "maintenance; back shortly.\").")
@json_events
@common
def maintenance(state: State, json_out: bool, state_word: str, message: str | None) -> None:
    ctx = load(state)
    on = state_word == "on"
    proxies = run(state, lambda: operations.maintenance(ctx, on, message))
    if json_out:
        emit_result([{"name": n, "maintenance": on} for n in proxies], out=ctx.out,
                    maintenance=on)
        return
    for name in proxies:
        click.echo(f"{name}: maintenance {state_word}")


@main.command(help="Tear the app down on every host: each proxy stops sending it traffic "
                   "(site files and link, or HAProxy config and map lines, removed; proxy "
                   "reloaded), both slots are drained and stopped (units disabled and "
                   "removed), and deploy_to (releases, history, env files) is deleted. Asks "
                   "first on a terminal; elsewhere it needs --yes.")
@click.option("--yes", is_flag=True, help="Do not ask (required without a terminal).")
@json_events
@dry_run_option
@common
def remove(state: State, json_out: bool, yes: bool) -> None:
    ctx = load(state)
    if not yes and not state.out.dry_run:
        names = ", ".join(h.label for h in [*ctx.hosts, *ctx.cfg.load_balancers])
        if not sys.stdin.isatty():
            click.echo(f"error: remove deletes {ctx.cfg.app} from {names}; without a terminal "
                       "to confirm, pass --yes", err=True)
            sys.exit(2)
        click.confirm(f"Remove {ctx.cfg.app} from {names} (slots stopped, site removed, "
                      "deploy_to deleted)?", abort=True)
    left = run(state, lambda: operations.remove(ctx))
    if json_out:
        emit_result([{"name": h, "left_for_admin": paths} for h, paths in left.items()],
                    out=ctx.out)
        return
    for host, paths in left.items():
        click.echo(f"{host}: removed" + (f"; root's files left for an admin: {' '.join(paths)}"
                                         if paths else ""))


@main.command(help="Remove a lock left by a run that died (prints who held it, since when).")
@json_data
@common
def unlock(state: State, json_out: bool) -> None:
    ctx = load(state)
    done = run(state, lambda: operations.unlock(ctx))
    if json_out:
        emit_result([{"name": host, "lock": what} for host, what in done])
        return
    for host, what in done:
        click.echo(f"{host}: {what}")


@main.command(help="Print the shell completion script for bash, zsh or fish (commands, "
                   "options, colours and the config's host names complete). bash: `eval "
                   "\"$(bluegreen completion bash)\"` in ~/.bashrc; zsh: the same in "
                   "~/.zshrc; fish: `bluegreen completion fish > "
                   "~/.config/fish/completions/bluegreen.fish`.")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(main, {}, "bluegreen", "_BLUEGREEN_COMPLETE").source())


@main.command(help="Print the configuration reference (every key of bluegreen.toml, its default "
                   "and meaning), or one SECTION of it ("
                   + ", ".join(s or "top" for s in DOC_SECTIONS) + "), or a GUIDE (e.g. "
                   "python, https, operations, servers, topologies; `bluegreen docs guides` "
                   "lists them): the docs/*.md files, installed with bluegreen. `docs "
                   "canary` prints the guide, then the [canary] keys.")
@click.argument("section", metavar="[SECTION|GUIDE]", required=False)
def docs(section: str | None) -> None:
    from bluegreen import guides

    if section == "guides":
        click.echo("\n".join(guides.names()) or "no guides installed")
        return
    if section == "top":
        section = ""
    if section is not None and section not in reference.SECTIONS:
        text = guides.read(section)
        if text is None:
            click.echo(f"error: no section or guide {section!r}; sections: "
                       + ", ".join(s or "top" for s in reference.SECTIONS) + "; guides: "
                       + (", ".join(guides.names()) or "none installed"), err=True)
            sys.exit(2)
        click.echo(text.rstrip())
        return
    guide = guides.read(section) if section else None
    if guide is not None:  # a section with a guide of its name (canary): both
        click.echo(guide.rstrip() + "\n\n## Keys\n")
    click.echo(reference.text(section).rstrip())


@main.command(help="No config needed: deploy a bundled sample app to this machine behind a "
                   "private nginx (or HAProxy), under load (v1 to blue, v2 to green, promote, "
                   "rollback), print what happened, and clean up.")
@click.option("--proxy", "kind", type=click.Choice(["nginx", "haproxy"]), default="nginx",
              show_default=True, help="The proxy kind to switch with.")
@click.option("--keep", is_flag=True, help="Leave the proxy and the app running; print the URL.")
@click.option("--duration", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Seconds of load before and after each switch.")
@click.option("-v", "--verbose", is_flag=True, help="Show each command run.")
def demo(kind: str, keep: bool, duration: float, verbose: bool) -> None:
    from bluegreen.demo.runner import run_demo

    state = State(None, (), verbose)
    state.out.mode = "plain"  # the demo prints its own table at the end
    run(state, lambda: run_demo(state.out, keep=keep, duration=duration, kind=kind))


@main.command(help="Keep a warm bluegreen process for this user, so that each command starts "
                   "in milliseconds instead of ~0.3 s (imports done once; each command runs "
                   "in a fork of it, with your terminal, environment and directory) and reuses "
                   "its SSH connections (verified again after any change to known_hosts, keys "
                   "or ~/.ssh). It exits after --idle seconds without a command, or when "
                   "bluegreen is upgraded "
                   "(the next command starts a fresh one). BLUEGREEN_WARM=0 runs a command "
                   "without it. Its socket: $XDG_RUNTIME_DIR/bluegreen/warm.sock (else "
                   "~/.cache/bluegreen/; BLUEGREEN_WARM_SOCKET sets another). More: "
                   "`bluegreen docs operations`.")
@click.option("--idle", type=click.FloatRange(min=1), default=600, show_default=True,
              metavar="SECONDS", help="Exit after this long without a command.")
@click.option("--stop", "action", flag_value="stop", help="Stop it (running commands go on).")
@click.option("--status", "action", flag_value="status",
              help="Say whether it runs (exit 1 if not).")
def warm(idle: float, action: str | None) -> None:
    from bluegreen import warm as warmth
    from bluegreen.launch import socket_path

    try:
        if action == "stop":
            pid = warmth.stop()
            click.echo(f"stopped the warm process (pid {pid})" if pid else
                       f"no warm process listens on {socket_path()}")
            return
        if action == "status":
            pid = warmth.status()
            click.echo(f"the warm process runs (pid {pid}, socket {socket_path()})" if pid
                       else f"no warm process listens on {socket_path()}")
            sys.exit(0 if pid else 1)
        path, pid, started = warmth.start(idle)
    except BlueGreenError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    if started:
        click.echo(f"started the warm process (pid {pid}, socket {path}): this user's "
                   f"bluegreen commands start in it now; it exits after {idle:g}s without one "
                   "(`bluegreen warm --stop` stops it)")
    else:
        click.echo(f"the warm process runs already (pid {pid}, socket {path})")


def command_table() -> str:
    """README's command table, made from the commands' own options and help (a test keeps
    the README equal to it). The options every config command takes (`common`) are said
    once, under the table."""
    import re

    rows = ["| command | what it does | options |", "|---|---|---|"]
    shared = {"config", "destination", "hosts", "verbose"}
    for name, command in main.commands.items():
        ctx = click.Context(command)
        usage = " ".join(p.make_metavar(ctx) for p in command.params
                         if isinstance(p, click.Argument))
        first = re.split(r"\.\s+(?=[A-Z])", command.help or "")[0].rstrip(".")
        names = {o.name for o in command.params}
        own = [o for o in command.params if isinstance(o, click.Option) and not o.hidden
               and not (shared <= names and o.name in shared)]
        options = ", ".join(
            "/".join(o.opts) + ("" if o.is_flag else f" {o.metavar or (o.name or '').upper()}")
            for o in own) + (" + common" if shared <= names else "")
        cells = [f"`bluegreen {name}{' ' + usage if usage else ''}`", first,
                 options.removeprefix(" + ") or "-"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    rows.append("")
    rows.append("common: `-c/--config PATH`, `-d/--destination NAME`, `--host NAME` "
                "(repeatable), `-v/--verbose`.")
    return "\n".join(rows) + "\n"
