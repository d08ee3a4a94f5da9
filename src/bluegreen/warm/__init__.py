"""`bluegreen warm`: the optional warm process. ``client``: the `bluegreen` entry point's
hand-over (standard library only); ``server``: the process that runs the commands it is
handed, in forks of itself. Nothing outside this folder imports it."""
