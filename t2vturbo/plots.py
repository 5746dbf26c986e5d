"""Training curves: loss and reward terms from metrics.jsonl, one PNG."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    """Plot loss, loss_cd and every reward/* column against step; returns the PNG path (None if no rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .safeio import atomic_path

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()] if metrics.is_file() else []
    rows = [r for r in rows if r.get("loss") is not None]
    if not rows:
        return None
    reward_keys = sorted({k for r in rows for k in r if k.startswith("reward/")})
    fig, axes = plt.subplots(1, 1 + bool(reward_keys), figsize=(5 + 5 * bool(reward_keys), 3.6), squeeze=False)
    steps = [r["step"] for r in rows]
    ax = axes[0][0]
    ax.plot(steps, [r["loss_cd"] for r in rows], label="consistency loss", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("consistency loss")
    if reward_keys:
        ax2 = axes[0][1]
        for k in reward_keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax2.plot([p[0] for p in pts], _smooth([p[1] for p in pts]), label=k.split("/", 1)[1], lw=1)
        ax2.set_xlabel("step")
        ax2.set_title("rewards (moving average)")
        ax2.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def _smooth(xs: list[float], k: int = 10) -> list[float]:
    out, acc = [], []
    for x in xs:
        acc.append(x)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out
