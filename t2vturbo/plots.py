"""Training curves: loss and reward terms from metrics.jsonl, one PNG."""

from __future__ import annotations

import json
from pathlib import Path

#: steps in the moving average of every curve
WINDOW = 10


def plot_metrics(metrics: Path, out: Path) -> Path | None:
    """Plot loss_cd, loss (when rewards make it differ) and every reward/* column against step, each as a moving
    average (the losses over their raw values, drawn faint); returns the PNG path (None if no rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .safeio import atomic_path

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()] if metrics.is_file() else []
    rows = [r for r in rows if r.get("loss") is not None]
    if not rows:
        return None
    reward_keys = sorted({k for r in rows for k in r if k.startswith("reward/")})
    panels = 1 + 2 * bool(reward_keys)  # consistency loss; with rewards also the total loss and the rewards
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    _smoothed(ax, *_series(rows, "loss_cd"), "consistency loss")
    ax.set_yscale("log")
    ax.set_title(f"consistency loss (moving average, {WINDOW} steps)")
    if reward_keys:
        ax = axes[0][1]
        _smoothed(ax, *_series(rows, "loss"), "loss")
        ax.set_title(f"loss = consistency - rewards (moving average, {WINDOW} steps)", fontsize="medium")
        ax = axes[0][2]
        for k in reward_keys:
            steps, values = _series(rows, k)
            ax.plot(steps, moving_average(values), label=k.split("/", 1)[1], lw=1)
        ax.set_title(f"rewards (moving average, {WINDOW} steps)")
        ax.legend()
    for ax in axes[0]:
        ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def _series(rows: list[dict], key: str) -> tuple[list, list[float]]:
    """(steps, values) of the rows that have ``key``."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smoothed(ax, steps: list, values: list[float], label: str) -> None:
    """The raw values faint, their moving average over them."""
    line = ax.plot(steps, values, lw=0.6, alpha=0.3)[0]
    ax.plot(steps, moving_average(values), lw=1.3, color=line.get_color(), label=label)


def moving_average(xs: list[float], k: int = WINDOW) -> list[float]:
    """Trailing mean over the last ``k`` values (fewer at the start): one value per input."""
    out, acc = [], []
    for x in xs:
        acc.append(x)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out
