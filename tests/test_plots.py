"""Training curves (t2vturbo.plots): one moving average for losses and rewards alike."""

import json

import pytest

from t2vturbo.plots import moving_average, plot_metrics


def test_moving_average_is_a_trailing_mean_over_k_values():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], k=2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([4.0, 0.0, 2.0, 6.0], k=3) == pytest.approx([4.0, 2.0, 2.0, 8 / 3])
    assert moving_average([], k=3) == []
    assert moving_average([7.0] * 25) == [7.0] * 25  # the default window: a constant stays put


@pytest.mark.parametrize("rewards", [True, False])
def test_plot_metrics_draws_losses_with_and_without_rewards(tmp_path, rewards):
    rows = []
    for s in range(1, 31):
        row = {"step": s, "loss_cd": 0.1 + 0.05 * (s % 3)}
        if rewards:
            row["reward/tiny-image"] = 0.8
            row["loss"] = row["loss_cd"] - 0.8  # negative: the total loss has its own linear panel
        else:
            row["loss"] = row["loss_cd"]
        rows.append(row)
    rows.insert(5, {"step": 5, "loss": None, "skipped": "non-finite loss"})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_metrics(metrics, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_metrics(tmp_path / "none.jsonl", tmp_path / "none.png") is None
