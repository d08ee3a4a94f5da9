"""Releases on one app host: which colour a deploy targets, the upload and unpack, the
migration, and pruning old releases."""

from __future__ import annotations

import time

from bluegreen.rollout import records
from bluegreen.rollout.artifact import Artifact
from bluegreen.config import Colour
from bluegreen.errors import ArtifactError, BlueGreenError, CommandFailed
from bluegreen.hosts.fleet import Node
from bluegreen.hosts import Result
from bluegreen.plan import files, release as releaseplan, slot as slotplan
from bluegreen.plan.slot import Slot, SlotState, slot_command
from bluegreen.rollout.topology import AppHost


async def deploy_target(a: AppHost, art: Artifact,
                        live: Colour | None) -> tuple[Colour, SlotState | None]:
    """The colour this deploy starts the release on: the idle one, except on the first
    deploy (the live slot has never run a release), when there is nothing to protect.
    With the state of the live slot when it already runs this release, healthy (a re-run
    after a deploy that was interrupted once it had switched): nothing left to do there."""
    if live is None:
        live = await a.require_live()  # raises: no link, run setup first
    live_state = await a.slots.state(live)
    if live_state is not None and live_state.release == art.release_id \
            and live_state.status == "running":
        resp = await a.slots.health(live)
        if resp is not None and resp.ok:
            a.node.say(f"{art.release_id} is already live on {live}; nothing to deploy here")
            return live, live_state
    first = live_state is None or live_state.status in ("starting", "failed")
    target = live if first else live.other
    a.node.say(f"live is {live}; deploying {art.release_id} to {target}"
               + (" (first deploy: nothing live to protect)" if first else ""))
    return target, None


async def upload(node: Node, art: Artifact, live_release: str | None = None) -> None:
    """Copy the artifact to the host, check its sha256 and unpack it as the release dir
    (skipped when the release is already there, whole). A release dir whose files are not
    as unpacked is unpacked again, or refused when there is no artifact to unpack
    (``rollback --to``) or the live slot (``live_release``) runs from it."""
    rid, layout = art.release_id, node.layout
    found = await node.run(releaseplan.exists(layout, rid), check=False)
    if found.ok:
        node.say(f"release {rid} already on the host; upload skipped")
        return
    if found.exit_status == releaseplan.DAMAGED:
        await _unpack_again(node, art, live_release, found.stdout.strip())
    if art.kept:
        raise ArtifactError(f"release {rid} is no longer kept on this host (pruned); nothing "
                            "was changed", host=node.name)
    if node.dry:
        node.say(f"would upload {art.path.name} ({art.path.stat().st_size / 1e6:.1f} MB) to "
                 f"{releaseplan.upload_path(node.layout, rid)}, check its sha256 "
                 f"({art.sha256[:12]}) and unpack it into {node.layout.release(rid)}")
        return
    dest = releaseplan.upload_path(layout, rid)
    size = art.path.stat().st_size
    node.say(f"uploading {art.path.name} ({size / 1e6:.1f} MB)")
    try:
        await node.host.put(art.path, dest)
    except CommandFailed as exc:
        await node.run(files.remove_file(dest), check=False)  # a partial upload frees its space
        raise CommandFailed(f"{exc.reason} ({await _free_space(node)}); live traffic was not "
                            "touched", host=node.name) from None
    node.say(f"checking its sha256 and unpacking into {layout.release(rid)}")
    verify = releaseplan.verify(dest, art.sha256)
    result = await node.run_steps([verify, releaseplan.unpack(layout, rid)], timeout=600,
                                  check=False)
    if result.argv == tuple(verify) and result.exit_status == releaseplan.CORRUPT:
        raise ArtifactError(
            f"upload corrupted: sha256 on the host is {result.stdout.strip()[:12]}, expected "
            f"{art.sha256[:12]}; run deploy again", host=node.name)
    if not result.ok:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise CommandFailed(f"unpacking {rid} failed ({await _free_space(node)}); nothing was "
                            f"started and live traffic was not touched:\n{detail}",
                            host=node.name, detail=detail)


async def _unpack_again(node: Node, art: Artifact, live_release: str | None,
                        damage: str) -> None:
    """Remove a release dir whose files were deleted or changed since it was unpacked
    (a half-done prune, a stray `rm`, an edit), so that it is unpacked anew; a broken tree
    is never started. Refused (exit 1, nothing changed) when there is no artifact to
    unpack it from or the live slot runs from it."""
    rid = art.release_id
    what = (f"release {rid} on this host is not as it was unpacked (files deleted or "
            f"changed since, {releaseplan.manifest(node.layout, rid)}):\n{damage}\n")
    if art.kept:
        raise ArtifactError(what + "It was not started and live traffic was not touched. "
                            f"Deploy its artifact again (`bluegreen deploy --version "
                            f"{art.version}`) to unpack it anew", host=node.name)
    if rid == live_release:
        raise ArtifactError(what + "The live slot runs from it, so it is left as it is and "
                            "nothing was changed; deploy another release", host=node.name)
    node.say(f"release {rid} is on the host but not as it was unpacked ("
             f"{damage.splitlines()[0] if damage else 'manifest check failed'}); "
             "unpacking it again")
    if not node.dry:
        await node.run(releaseplan.remove(node.layout, [rid]))


async def prepare(a: AppHost, slot: Slot, secrets: dict[str, str]) -> None:
    """Run ``release.prepare`` in the new release dir with the slot's env, once per
    release (a re-run after a crash skips a release prepared before). Its failure stops
    the deploy before the idle slot is stopped: nothing started, nothing switched."""
    node, command = a.node, a.node.cfg.release.prepare
    if not command:
        return
    layout = node.layout
    if (await node.run(files.exists(releaseplan.prepared_marker(layout, slot.release_id)),
                       check=False)).ok:
        node.say(f"{slot.release_id} was prepared before; prepare skipped")
        return
    env_file = layout.slot(slot.colour) / "prepare.env"
    await node.run(files.make_dirs([layout.slot(slot.colour)]))
    await node.run(files.write_file(env_file, "0600"),
                   input=slotplan.env_script(slotplan.slot_env(node.cfg, slot, secrets)))
    node.say(f"prepare in {slot.release_dir}: {command}")
    started = time.monotonic()
    result = await node.run(releaseplan.prepare(layout, slot.release_id, env_file,
                                                slot.render(node.cfg, command)),
                            timeout=1800, check=False)
    output = node.out.mask(result.stdout.rstrip())
    if not result.ok:
        tail = "\n".join(output.splitlines()[-30:])
        raise BlueGreenError(f"prepare failed (exit {result.exit_status}) in "
                             f"{slot.release_dir}; nothing was started or switched and live "
                             f"traffic was not touched:\n{tail}", host=node.name, detail=tail)
    node.say(f"prepared in {time.monotonic() - started:.1f}s")


async def _free_space(node: Node) -> str:
    """How much space is left where releases go, for messages about a failed write."""
    result = await node.run(files.free_space(node.layout.releases), check=False)
    return files.parse_free_space(result.stdout) if result.ok else "free space unknown"


async def migrate_on(a: AppHost, colour: Colour, state: SlotState) -> None:
    """Run ``run.migrate`` with the slot's release and env; its output is shown."""
    cfg, node = a.node.cfg, a.node
    assert cfg.run.migrate is not None
    slot = a.slots.slot(colour, state.release, state.version)
    node.say(f"migrate with {state.release} ({colour}): {cfg.run.migrate}")
    result = await node.run(slot_command(state.cwd, node.layout.slot_env(colour),
                                         slot.render(cfg, cfg.run.migrate)),
                            timeout=3600, check=False)
    output = node.out.mask((result.stdout + result.stderr).rstrip())
    for line in output.splitlines()[-50:]:
        node.say(f"  {line}")
    if not result.ok:
        raise BlueGreenError(f"migrate failed (exit {result.exit_status}); nothing was switched "
                             f"and live traffic was not touched", host=node.name, detail=output)


async def kept_release(a: AppHost, spec: str) -> str:
    """The newest release kept on the host whose id is ``spec`` or whose version is."""
    names = [r for r in (await a.node.run(releaseplan.list_releases(a.node.layout))
                         ).stdout.split() if not r.startswith(".")]
    matches = [r for r in names if r == spec or r.rpartition("-")[0] == spec]
    if not matches:
        raise BlueGreenError(f"no kept release is {spec!r}; kept here (oldest first): "
                             + (", ".join(names) or "none"), host=a.node.name)
    return matches[-1]


async def prune_host(a: AppHost, keep: int, user: str, listing: list[str] | None = None,
                     if_done: bool = False) -> list[str]:
    """Delete all but the ``keep`` newest releases, never the blue or green slot's.
    ``listing``: the release dirs (oldest first) as read before, instead of reading them
    now. ``if_done``: the removal goes with the next round trip, after its steps, if they
    all succeed (the verify that ends a deploy); a failed removal is then a warning."""
    node = a.node
    names = listing if listing is not None else (
        await node.run(releaseplan.list_releases(node.layout))).stdout.split()
    protected = {st.release for c in Colour if (st := await a.slots.state(c)) is not None}
    doomed = releaseplan.to_prune(names, keep, protected)
    if not doomed:
        return []
    what = f"{len(doomed)} old release(s): {', '.join(doomed)}"
    if if_done:
        def removed(result: Result) -> None:
            if result.ok:
                node.say(f"pruned {what}")
            else:
                node.warn(f"pruning {what} failed (exit {result.exit_status}): "
                          f"{(result.stderr.strip() or result.stdout.strip())[-300:]}")

        node.if_done(releaseplan.remove(node.layout, doomed), then=removed)
    else:  # with the lock's release (one round trip)
        node.say(f"pruning {what}")
        node.later(releaseplan.remove(node.layout, doomed), then=node.check)
    await records.record(node, "prune", None, None, user, "removed " + " ".join(doomed),
                         if_done=if_done)
    return doomed
