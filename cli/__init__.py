"""The t2vturbo command line (installed as the ``t2vturbo_cli`` package)."""
