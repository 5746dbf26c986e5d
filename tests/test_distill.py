"""End-to-end distillation on the tiny architecture (4 frames of 32x32, seconds per step on a CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2vturbo.config import load_recipe
from t2vturbo.distill import run_distill
from t2vturbo.errors import TrainingError
from t2vturbo.rewards import RewardModel, register_reward

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


def _cli(*args):
    from t2vturbo_cli.main import app

    return CliRunner().invoke(app, list(args))


def test_distill_writes_student_metrics_config_samples_and_curves(clips, tmp_path):
    out = tmp_path / "run"
    # 4 steps of batch 1 read a whole epoch of the 4 listed clips, the broken one included
    res = _cli("distill", str(TINY), *small_distill_overrides(clips, steps=4), "-o", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"loss", "loss_cd", "reward/toy-image", "reward/toy-video", "lr", "seconds"} <= set(r)
        # loss = L_cd - sum(beta * R)
        expect = r["loss_cd"] - 0.5 * r["reward/toy-image"] - 0.5 * r["reward/toy-video"]
        assert r["loss"] == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert rows[-1]["skipped_clips"] >= 1  # the broken clip was skipped and counted
    assert "skipping unreadable clip" in res.output
    resolved = load_recipe(out / "config.yaml")
    assert resolved.train.max_steps == 4 and resolved.video.frames == 4
    student = load_file(str(out / "student" / "student.safetensors"))
    assert "time_embedding.cond_proj.weight" in student
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in student.items())
    meta = json.loads((out / "student" / "student.json").read_text())
    assert meta["base_model"] == "tiny" and meta["lora"]["rank"] == 4
    assert len(list((out / "samples").glob("*.mp4"))) == 1
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    # a second run into the same folder without --resume is refused, nothing touched
    before = (out / "metrics.jsonl").read_text()
    res = _cli("distill", str(TINY), *small_distill_overrides(clips, steps=3), "-o", str(out))
    assert res.exit_code == 2 and "--resume" in res.output
    assert (out / "metrics.jsonl").read_text() == before


def test_dry_run_loads_nothing_and_prints_the_plan(tmp_path):
    res = _cli("distill", str(REPO / "recipes" / "modelscope.yaml"), "--dry-run", "-o", str(tmp_path / "x"))
    assert res.exit_code == 1, res.output  # the run cannot start: data, the hub teacher and reward weights absent
    assert "hpsv2.1 (image) beta 2.0" in res.output and "viclip (video) beta 3.0" in res.output
    assert "missing data.path" in res.output
    assert "not cached: hf download ali-vilab/text-to-video-ms-1.7b" in res.output
    assert "not cached: hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in res.output
    assert not (tmp_path / "x").exists()
    res = _cli("distill", str(TINY), "--dry-run", "-o", str(tmp_path / "y"))
    assert res.exit_code == 0 and "the run can start" in res.output, res.output


def test_bad_recipe_is_one_line(tmp_path):
    res = _cli("distill", str(TINY), "train.max_steps=ten", "-o", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert "train.max_steps: expected an integer" in res.output and "Traceback" not in res.output


class _NaNReward(RewardModel):
    kind = "image"

    def forward(self, frames, prompts):
        return frames.mean(dim=(1, 2, 3, 4)) * float("nan")


@register_reward("test-nan", kind="image")
def _nan_reward(checkpoint=None, device="cpu", dtype=torch.float32, **kw):
    return _NaNReward()


def test_nan_losses_skip_steps_then_stop_with_a_checkpoint(clips, tmp_path):
    ov = small_distill_overrides(clips, steps=10, **{"rewards": "[{name: test-nan, weight: 1.0}]",
                                                     "train.max_nonfinite": 3})
    r = load_recipe(TINY, ov)
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        run_distill(r, tmp_path / "nan", progress=False, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == ["non-finite loss"] * 3
    assert (tmp_path / "nan" / "checkpoints" / "step-0000003" / "state.json").is_file()
    assert not (tmp_path / "nan" / "student").exists()


def test_read_only_output_dir_is_one_line(clips, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("precious")
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        res = _cli("distill", str(TINY), *small_distill_overrides(clips, steps=1), "-o", str(ro / "run"))
        assert res.exit_code == 2 and "not writable" in res.output or "permission denied" in res.output
    finally:
        ro.chmod(0o700)
    assert (ro / "keep.txt").read_text() == "precious"


def _student(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student" / "student.safetensors"))


def test_sigkill_then_resume_matches_an_uninterrupted_run(clips, tmp_path):
    # a decoding worker reads ahead of the step: the resumed run must still read exactly the straight run's clips
    ov = small_distill_overrides(clips, steps=6, **{"train.checkpoint_every": 2, "train.num_threads": 1,
                                                    "sample.prompts": "[]", "data.num_workers": 1})
    # 1. uninterrupted
    straight = tmp_path / "straight"
    cmd = [sys.executable, "-m", "t2vturbo_cli", "distill", str(TINY), *ov, "--no-progress"]
    subprocess.run([*cmd, "-o", str(straight)], check=True, capture_output=True)
    # 2. killed with SIGKILL right after its step-2 checkpoint, then resumed
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "-o", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-0000002" / "state.json"
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "run ended before it could be killed"
    assert not (killed / "student").exists()
    res = subprocess.run([*cmd, "-o", str(killed), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    a, b = _student(straight), _student(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_two_process_cpu_distill_with_torchrun(clips, tmp_path):
    out = tmp_path / "ddp"
    ov = small_distill_overrides(clips, steps=2, **{"train.num_threads": 1, "sample.prompts": "[]"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "t2vturbo_cli", "distill", str(TINY), *ov, "-o", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = json.loads((out / "rank-0.json").read_text())
    r1 = json.loads((out / "rank-1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["student_sha256"] == r1["student_sha256"]
    assert r0["data"]["position"] >= 2 and r1["data"]["position"] >= 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(r["reward/toy-image"] != 0 and r["reward/toy-video"] != 0 for r in rows)


def test_resume_skips_a_damaged_newest_checkpoint(clips, tmp_path):
    ov = small_distill_overrides(clips, steps=4, **{"sample.prompts": "[]", "train.keep_checkpoints": 3})
    out = tmp_path / "run"
    run_distill(load_recipe(TINY, ov), out, progress=False, log=lambda m: None)
    first = _student(out)
    newest = out / "checkpoints" / "step-0000004" / "tensors.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    logs: list[str] = []
    run_distill(load_recipe(TINY, ov), out, resume=True, progress=False, log=logs.append)
    assert any("step-0000004 is unusable" in m for m in logs)
    assert any("resumed from" in m and "step-0000002" in m for m in logs)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    again = _student(out)
    for k in first:
        torch.testing.assert_close(again[k], first[k], atol=1e-6, rtol=0)


def test_ema_target_is_checkpointed_and_lags_the_student(clips, tmp_path):
    from t2vturbo.train_state import list_checkpoints, load_checkpoint

    ov = small_distill_overrides(clips, steps=2, **{"sample.prompts": "[]", "distill.target": "ema",
                                                    "distill.ema_decay": 0.5})
    out = tmp_path / "ema"
    run_distill(load_recipe(TINY, ov), out, progress=False, log=lambda m: None)
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])
    assert state["ema"] and set(state["ema"]) == set(state["student"])
    lora_b = [k for k in state["student"] if "lora_B" in k]
    moved = [k for k in lora_b if state["student"][k].abs().max() > 0]
    assert moved
    for k in moved:
        # B starts at 0; the EMA with decay 0.5 trails the online weights
        assert not torch.equal(state["ema"][k], state["student"][k])
        assert state["ema"][k].abs().max() > 0
