"""The rollout layer: the steps of a release's life on the hosts, built on hosts/, proxies/
and supervisors/: a slot's state (``slots``) and its start step (``boot``), releases on
disk (``releases``) and the local artifact (``artifact``), which hosts and proxies a
command works on (``topology``), the lock and history (``records``), the all-or-nothing
switch (``switch``) and the judged canary (``canary``)."""
