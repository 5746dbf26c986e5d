"""``python -m t2vturbo_cli`` (used under torchrun: ``torchrun --nproc_per_node 2 -m t2vturbo_cli distill ...``)."""

from t2vturbo_cli.main import app

app()
