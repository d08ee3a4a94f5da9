"""The commands layer: the verbs. ``context``: what every command works with (connecting,
locking, secrets); ``setup``; ``workflow``: deploy, promote, rollback, stop, prune;
``releases``: the kept releases `rollback --list` shows; ``operations``: the day-two ones;
``reports``: check, status, history; ``hooks``: the user's hooks. The CLI calls these, and
nothing below calls up into them."""
