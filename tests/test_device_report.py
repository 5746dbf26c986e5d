"""bench/device_report.py at --size small on the CPU: every row is measured and the report has its fields (no
timing is asserted); the full-size configurations build on the meta device with the real parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_module():
    sys.path.insert(0, str(BENCH))
    try:
        import device_report
    finally:
        sys.path.remove(str(BENCH))
    return device_report


def test_small_report_runs_every_row(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "device_report.py"), "--device", "cpu", "--size", "small", "--out", str(out),
         "--threads", "1", "--teacher-steps", "6", "--repeats", "1", "--steps", "1", "--warmup", "0",
         "--score-videos", "4", "--score-batch", "2", "--sample-batch", "2"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["size"] == "small" and report["device"] == "cpu" and not report["failed"]
    tasks = [(r["task"], r["variant"], bool(r.get("checkpointing")), r.get("reward_checkpointing", True))
             for r in report["runs"]]
    assert tasks == [("sample", "eager", False, True), ("distill", "ours", False, True),
                     ("distill", "reference", False, True), ("distill", "ours", False, False),
                     ("distill", "ours", True, True), ("distill", "ours", True, True),
                     ("distill", "ours", False, False), ("distill", "ours", False, False),
                     ("score", "batched", False, True)]
    assert report["runs"][5]["split"] and not report["runs"][4].get("split")
    assert report["runs"][6]["reward_dtype"] == "bfloat16" and "rewards in bfloat16" in report["table"]
    assert report["runs"][7]["cache_text"] and "text cached + decode checkpointing" in report["table"]
    sample = report["runs"][0]
    assert sample["teacher"]["unet_calls"] == 6 and sample["student"]["unet_calls"] == 4
    for row in (sample["teacher"], sample["student"], sample["student_batched"]):
        parts = row["unet_s"] + row["vae_s"] + row["text_s"] + row["other_s"]
        assert row["s_per_video"] > 0 and abs(parts - row["s_per_video"]) < 1e-6
    assert sample["speedup"] > 0 and sample["batch"] == 2
    for run in report["runs"][1:8]:
        assert run["s_per_step"] > 0 and run["peak_mb"] > 0 and len(run["losses"]) == 1
        assert run["peak_mb"] >= run["setup_mb"] > 0 and run["peak_is_steps_only"]
    ours, ref = report["runs"][1], report["runs"][2]
    assert ours["unet_params"] == ref["unet_params"]  # the same model on both sides
    assert ours["trained_params"] == ref["trained_params"] > 0
    score = report["runs"][8]
    for name in ("hpsv2.1", "viclip"):
        assert score[name]["model_videos_per_s_one"] > 0 and score[name]["e2e_videos_per_s_batched"] > 0
    table = report["table"]
    assert table.startswith("| measurement |") and "peak memory" in table and "score viclip" in table
    assert table.strip() in proc.stdout  # the same table is printed


def test_full_size_models_have_the_real_sizes():
    """ModelScope's UNet (1.41 B), the 23-layer 1024-wide text encoder and the Wan2.1 1.3B transformer, on meta."""
    from diffusers import UNet3DConditionModel, WanTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    report = _load_module()
    full = report.SIZES["full"]
    with torch.device("meta"):
        unet = UNet3DConditionModel(**full["unet"])
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **full["text"]))
        wan = WanTransformer3DModel(**full["wan"])
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(1.41e9, rel=0.01)
    assert text.config.num_hidden_layers == 23 and text.config.hidden_size == 1024
    assert sum(p.numel() for p in wan.parameters()) == pytest.approx(1.42e9, rel=0.01)
    assert full["image_reward"] == "ViT-H-14" and full["video"] == (16, 256, 256)
