"""The commands layer: the verbs (setup, deploy, promote, rollback, stop, prune in
``workflow``; the day-two ones in ``operations``; check, status and history in
``reports``; the user's hooks in ``hooks``). The CLI calls these, and nothing below calls
up into them."""
