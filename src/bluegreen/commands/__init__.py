"""The commands layer: the verbs (setup, deploy, promote, rollback, stop, prune in
``workflow``; the day-two ones in ``operations``; check, status and history in
``reports``; the kept releases `rollback --list` shows in ``releases``; the user's
hooks in ``hooks``). The CLI calls these, and nothing below calls
up into them."""
