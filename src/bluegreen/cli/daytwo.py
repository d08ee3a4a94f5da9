"""The commands that read hosts, and the day-two ones: status, history, migrate, console,
exec, logs, maintenance, remove, unlock; completion, docs and the demo."""

from __future__ import annotations

import sys

import click

from bluegreen.cli.app import (COLOURS, DOC_SECTIONS, JSON_SCHEMA, State, common,
                               dry_run_option, emit_json, emit_result, json_data, json_events,
                               load, lock_wait_option, main, run, to_colour)

from bluegreen.cli.lazy import operations, reference, reports, views, workflow


@main.command(help="Per host: the live colour, what the proxy answers, and each slot's "
                   "release, version, port, pid, running and healthy. Exits 1 when a live "
                   "slot is not running or not healthy (users get errors; the problem "
                   "names the fix), 3 when a host cannot be reached.")
@json_data
@common
def status(state: State, json_out: bool) -> None:
    state.out.quiet = json_out
    ctx = load(state)
    data = run(state, lambda: reports.status(ctx.cfg, ctx.hosts, ctx.out, ctx.via))
    if json_out:
        emit_json({"schema": JSON_SCHEMA, "ok": not data["problems"] and all(
            h["reachable"] for h in [*data["hosts"], *data.get("load_balancers", [])]), **data})
    else:
        views.print_status(data)
    if any(not h["reachable"] for h in [*data["hosts"], *data.get("load_balancers", [])]):
        sys.exit(3)
    if reports.live_slots_down(data["hosts"]):
        sys.exit(1)


@main.command(help="Drain and stop an idle slot (the live one is refused).")
@click.argument("colour", type=COLOURS)
@lock_wait_option
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
    click.echo(f"{colour} would be stopped" if state.out.dry_run else f"{colour} stopped")


@main.command(help="Deploy, promote, rollback, stop, prune and failure events, newest first. "
                   "A switch that moved nothing (the first deploy, a promote of the live "
                   "colour) is not recorded; a failure names the colour and release it was "
                   "about. A line torn by a crash in the middle of an append is skipped, "
                   "with a warning.")
@click.option("-n", "limit", type=click.IntRange(min=1), help="Show at most N events.")
@json_data
@common
def history(state: State, json_out: bool, limit: int | None) -> None:
    state.out.quiet = json_out
    ctx = load(state)
    events, torn = run(state, lambda: operations.read_history(ctx, limit))
    if json_out:
        names = list(dict.fromkeys([*(e["host"] for e in events), *torn]))
        emit_result([{"name": n, "torn_lines": torn[n]} if n in torn else {"name": n}
                     for n in names], events=events)
        return
    views.print_history(events)


@main.command(help="Keep the N newest releases plus the blue and green slots' releases; delete "
                   "the rest.")
@click.option("--keep", type=click.IntRange(min=1), help="How many to keep (default: release.keep).")
@lock_wait_option
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
        click.echo(f"{host}: {'would remove' if state.out.dry_run else 'removed'} {len(rids)} "
                   "release(s)" + (": " + " ".join(rids) if rids else ""))


@main.command(help="Run run.migrate with a slot's release, env and env_file (default: the idle "
                   "slot, where a deploy --no-promote left the new release).")
@click.option("--color", "colour", type=COLOURS, help="The slot (default: idle).")
@lock_wait_option
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
                   "off`: serve the app again. Both verified through every proxy (else "
                   "exit 1 with the reason). nginx: no reload; HAProxy: through the "
                   "runtime API. Recorded in history; `status` shows it.")
@click.argument("state_word", metavar="on|off", type=click.Choice(["on", "off"]))
@click.option("--message", metavar="TEXT", help="The page's text (default: \"Down for "
              "maintenance; back shortly.\").")
@lock_wait_option
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
                   "removed), and what bluegreen made under deploy_to (releases, slots, "
                   "shared, history.jsonl, lock) is deleted, then deploy_to itself if that "
                   "left it empty (else it is kept, with a note). Asks first on a terminal; "
                   "elsewhere it needs --yes.")
@click.option("--yes", is_flag=True, help="Do not ask (required without a terminal).")
@lock_wait_option
@json_events
@dry_run_option
@common
def remove(state: State, json_out: bool, yes: bool) -> None:
    ctx = load(state)
    if not yes and not state.out.dry_run:
        from bluegreen.plan.layout import Layout

        names = ", ".join(h.label for h in [*ctx.hosts, *ctx.cfg.load_balancers])
        roots = ", ".join(dict.fromkeys(str(Layout.of(ctx.cfg, h).root) for h in ctx.hosts))
        if not sys.stdin.isatty():
            click.echo(f"error: remove deletes {ctx.cfg.app} from {names} (in {roots}); "
                       "without a terminal to confirm, pass --yes", err=True)
            sys.exit(2)
        click.confirm(f"Remove {ctx.cfg.app} from {names} (slots stopped, site removed; "
                      f"releases, slots, shared, history.jsonl and lock deleted from {roots}, "
                      "then the directory if nothing else is in it)?", abort=True)
    removed = run(state, lambda: operations.remove(ctx))
    if json_out:
        emit_result([{"name": h, "left_for_admin": r.left_for_admin,
                      **({"deploy_to": r.deploy_to, "kept": r.kept} if r.deploy_to else {})}
                     for h, r in removed.items()], out=ctx.out)
        return
    for host, r in removed.items():
        notes = ([f"{r.deploy_to} kept: it holds other files ({', '.join(r.kept)})"]
                 if r.kept else [])
        if r.left_for_admin:
            notes.append(f"root's files left for an admin: {' '.join(r.left_for_admin)}")
        click.echo(f"{host}: {'would be removed' if state.out.dry_run else 'removed'}"
                   + "".join(f"; {n}" for n in notes))


@main.command(help="Remove a lock left by a run that died (prints who held it, since when). "
                   "A lock under an hour old whose run may still be going on (its pid runs "
                   "on this machine, or it was taken on another machine) is refused with "
                   "exit 4 on every host, unless --force.")
@click.option("--force", is_flag=True,
              help="Remove a fresh lock even when its run may still be going on.")
@json_data
@common
def unlock(state: State, json_out: bool, force: bool) -> None:
    ctx = load(state)
    done = run(state, lambda: operations.unlock(ctx, force))
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
    from bluegreen.cli import guides

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
@click.option("--keep", is_flag=True, help="Leave the proxy and the app running, write its "
              "bluegreen.toml, and print the URL and the commands that drive it.")
@click.option("--duration", type=click.FloatRange(min=0.5), default=2.0, show_default=True,
              help="Seconds of load before and after each switch.")
@click.option("-v", "--verbose", is_flag=True, help="Show each command run.")
def demo(kind: str, keep: bool, duration: float, verbose: bool) -> None:
    from bluegreen.demo.runner import run_demo

    state = State(None, (), verbose)
    state.out.mode = "plain"  # the demo prints its own table at the end
    run(state, lambda: run_demo(state.out, keep=keep, duration=duration, kind=kind))
