"""The command line's frame: the `bluegreen` group, the options every command shares, running
a command's coroutine and mapping its errors to exit codes, `--json` results. The commands
themselves: ``changes`` (those that change hosts), ``daytwo`` (reading and day-two ones).

No SSH and no nginx here."""

from __future__ import annotations

import functools
import json
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, Coroutine, NoReturn, TypeVar

import click

from bluegreen import __version__
from bluegreen.cli.lazy import commands_context
from bluegreen.errors import BlueGreenError

if TYPE_CHECKING:
    from bluegreen.config import Colour
    from bluegreen.output import Reporter




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
        self.lock_wait = 0.0  # `--lock-wait`, in seconds

    def context(self) -> commands_context.Context:
        from bluegreen.config import load_config

        cfg = load_config(self.config_path, self.destination)
        ctx = commands_context.make_context(cfg, self.out, self.host_names)
        ctx.lock_wait = self.lock_wait
        return ctx


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
                  help="Config file (default: bluegreen.toml here or in the nearest "
                       "directory above).")
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
        lock_wait = kw.pop("lock_wait", None)
        state = State(config, hosts, verbose, kw.pop("json_out", False) and not dry, events,
                      destination)
        if lock_wait:
            from bluegreen import values

            state.lock_wait = values.seconds(lock_wait)  # checked by its callback
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


def lock_wait_option(fn: F) -> F:
    """--lock-wait: a command that takes the hosts' lock waits for a held one (`common`
    takes the value and puts it in the context)."""
    return click.option("--lock-wait", "lock_wait", metavar="DURATION",
                        callback=checked("seconds"),
                        help="When another run holds a host's lock, wait up to DURATION "
                             "(e.g. 30s, 2m) for it to end, saying who holds it, instead "
                             "of exit 4 at once (CI pipelines that overlap); still exit 4 "
                             "if it is held that long.")(fn)


def json_data(fn: F) -> F:
    """--json for a command that prints data (`logs`: JSON lines)."""
    fn.data = True  # type: ignore[attr-defined]
    text = ('JSON lines on stdout, {"host", "color", "release", "line"} per log line.'
            if fn.__name__ == "logs" else "One JSON document on stdout.")
    return click.option("--json", "json_out", is_flag=True, help=text)(fn)


class OptionError(click.ClickException):
    """A bad option value: one line, `error: ...`, exit 2 (as a bad config value)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def checked(parser: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """An option callback that refuses a value ``values.<parser>`` refuses (a ValueError),
    before any config is read; "" (a flag given without its value) is left to the config's
    default. (``values`` imports pydantic: only when the option is given.)"""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value:
            from bluegreen import values

            try:
                getattr(values, parser)(value)
            except ValueError as exc:
                raise OptionError(f"{param.opts[0]} {exc}") from None
        return value

    return callback


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
    # Masked here, where it is printed, whatever put a secret in the message (a log tail,
    # a command's output): not only where each producer remembered to.
    mask = state.out.mask
    if state.verbose:
        sys.stderr.write(mask(traceback.format_exc()))
    state.out.error(exc.message)
    if state.events:
        emit_json({"schema": JSON_SCHEMA, "ok": False, "error": mask(exc.message),
                   "exit_code": exc.exit_code,
                   "hosts": [{"name": exc.host, "error": mask(exc.reason)}] if exc.host
                   else []})
    sys.exit(exc.exit_code)


def load(state: State) -> commands_context.Context:
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


def first_sentence(text: str | None) -> str:
    """A command's help up to the end of its first sentence (a period before a capital:
    "e.g. `bin/app remote`" does not end one), without that period."""
    return re.split(r"\.\s+(?=[A-Z])", text or "")[0].rstrip(".")


class Program(click.Group):
    """The `bluegreen` group: `--help` lists the commands in the order a first deploy meets
    them (the order they are added), each with the whole first sentence of its help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, first_sentence(command.help)) for name, command in self.commands.items()
                if not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=Program, help="Zero-downtime blue-green deploys to one or many Linux servers, switched "
                  "with nginx or HAProxy.\n\nOptions go after the command name: "
                  "`bluegreen deploy -c prod.toml`.\n" + EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="bluegreen")
def main() -> None:
    pass


def command_table(group: click.Group | None = None) -> str:
    """README's command table, made from the commands' own options and help (a test keeps
    the README equal to it), of ``group`` (default: this package's; the `bluegreen` program
    adds `warm`). The options every config command takes (`common`) are said once, under
    the table."""
    rows = ["| command | what it does | options |", "|---|---|---|"]
    shared = {"config", "destination", "hosts", "verbose"}
    for name, command in (group or main).commands.items():
        ctx = click.Context(command)
        usage = " ".join(p.make_metavar(ctx) for p in command.params
                         if isinstance(p, click.Argument))
        first = first_sentence(command.help)
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
