"""The memory plan (issue 29): counted on the meta device, its parameter and optimiser bytes equal a real run's
for the tiny models; the full-size configurations have the published sizes; the dry run prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from t2vturbo import memory_plan as M
from t2vturbo.config import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _real_run_bytes(recipe_file: str, overrides: list[str]) -> tuple[int, int, int, int]:
    """(frozen network bytes, trainable bytes, AdamW state bytes after one optimiser step, a full fine-tune's
    frozen teacher copy bytes) of a real setup."""
    from t2vturbo.distill import Distiller

    r = load_recipe(RECIPES / recipe_file, overrides)
    d = Distiller(r, Path("/nonexistent-unused"), progress=False, log=lambda m: None)
    d.setup_processes()
    d.stream = d.make_stream(r, 0, 1, log=lambda m: None)
    d.build_student()
    opt, _ = d.build_optimizer()
    params = [p for p in d.network.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")
    frozen = sum(p.numel() * p.element_size() for p in d.network.parameters() if not p.requires_grad)
    copy = 0 if d.frozen is None else sum(p.numel() * p.element_size() for p in d.frozen.parameters())
    return frozen, sum(p.numel() * 4 for p in params), state, copy


@pytest.mark.parametrize("recipe_file", ["tiny.yaml", "tiny-wan.yaml"])
def test_plan_counts_equal_a_real_run(recipe_file):
    ov = ["model.device=cpu", "lora.rank=8"]
    c = M.count(load_recipe(RECIPES / recipe_file, ov))
    frozen, trainable, optimiser, copy = _real_run_bytes(recipe_file, ov)
    assert (c.frozen, c.trainable, c.optimiser, c.teacher_copy) == (frozen, trainable, optimiser, copy)
    assert c.activations > 0 and c.largest_unit > 0


@pytest.mark.parametrize("recipe_file", ["tiny.yaml", "tiny-wan.yaml"])
def test_plan_counts_a_full_finetune_as_a_real_run(recipe_file):
    """train.full_finetune: the whole network trainable in fp32 (+ gradients, AdamW states), nothing frozen in
    it, and the frozen teacher copy in model.dtype; FSDP divides the copy as it divides the rest."""
    ov = ["model.device=cpu", "train.full_finetune=true"]
    c = M.count(load_recipe(RECIPES / recipe_file, ov))
    frozen, trainable, optimiser, copy = _real_run_bytes(recipe_file, ov)
    assert (c.frozen, c.trainable, c.optimiser, c.teacher_copy) == (frozen, trainable, optimiser, copy)
    assert frozen == 0 and copy > 0 and trainable >= copy  # the student is the network plus its projection
    assert c.trainable_params * 4 == c.trainable and c.activations > 0
    lora = M.count(load_recipe(RECIPES / recipe_file, ["model.device=cpu", "lora.rank=8"]))
    assert lora.teacher_copy == 0 and lora.frozen == copy  # the LoRA run's frozen base is the copy's size
    ddp, fsdp = M.per_rank(c, 4, "ddp"), M.per_rank(c, 4, "fsdp")
    assert ddp["teacher copy (frozen)"] == pytest.approx(copy / M.GIB)
    assert fsdp["teacher copy (frozen)"] == pytest.approx(copy / 4 / M.GIB)


def test_fsdp_divides_what_it_shards_and_offload_moves_it_to_the_cpu():
    c = M.Counted(frozen=8 * M.GIB, frozen_params=4 * 2**30, trainable_params=2**28, trainable=M.GIB,
                  optimiser=2 * M.GIB, ema=0, vae=M.GIB, text=0, rewards=M.GIB, largest_unit=M.GIB // 4,
                  activations=3 * M.GIB)
    ddp, fsdp, off = (M.per_rank(c, 8, m) for m in ("ddp", "fsdp", "fsdp+offload"))
    assert ddp["total"] == pytest.approx(8 + 1 + 1 + 2 + 1 + 1 + 1 + 3)  # + one bucket of gradients
    assert fsdp["total"] == pytest.approx((8 + 1 + 1 + 2) / 8 + 0.5 + 1 + 1 + 3)
    assert off["total"] == pytest.approx(0.5 + 1 + 1 + 3) and off["CPU (offloaded)"] == pytest.approx(1.5)
    assert M.smallest_gpu(20).startswith("24 GB") and M.smallest_gpu(22).startswith("40 GB")
    assert M.smallest_gpu(500).startswith("none")


def test_full_size_configurations_have_the_published_sizes():
    ms = M.meta_teacher("ali-vilab/text-to-video-ms-1.7b")
    assert 1.40e9 < sum(p.numel() for p in ms.network.parameters()) < 1.42e9
    wan14 = M.meta_teacher("Wan-AI/Wan2.1-T2V-14B-Diffusers", torch.bfloat16)
    assert 14.0e9 < sum(p.numel() for p in wan14.network.parameters()) < 14.5e9
    assert len(wan14.network_blocks()) == 40
    umt5 = sum(p.numel() for p in wan14.text_encoder.parameters())
    assert 5.6e9 < umt5 < 5.8e9  # umt5-xxl's encoder
    wan13 = M.meta_teacher("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert 1.3e9 < sum(p.numel() for p in wan13.network.parameters()) < 1.45e9


def test_reward_sizes_are_their_architectures():
    from t2vturbo.rewards.internvideo2 import InternVideo2, InternVideo2Config
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig

    with torch.device("meta"):
        assert sum(p.numel() for p in ViCLIP(ViCLIPConfig()).parameters()) == M.REWARD_PARAMS["viclip"]
        iv2 = InternVideo2(InternVideo2Config())
        assert sum(p.numel() for p in iv2.parameters()) == M.REWARD_PARAMS["internvideo2"]
        from t2vturbo.rewards.hpsv3 import HPSv3
        from t2vturbo.rewards.videoreward import QwenVLConfig, VideoReward

        assert sum(p.numel() for p in VideoReward(QwenVLConfig()).parameters()) == M.REWARD_PARAMS["videoreward"]
        assert sum(p.numel() for p in HPSv3().parameters()) == M.REWARD_PARAMS["hpsv3"]


def test_checkpointing_and_text_cache_lower_the_plan():
    base = ["model.device=cpu", "video.frames=8", "video.height=64", "video.width=64"]
    plain = M.count(load_recipe(RECIPES / "tiny.yaml", base))
    lighter = M.count(load_recipe(RECIPES / "tiny.yaml", [*base, "train.gradient_checkpointing=true",
                                                           "train.cache_text=true"]))
    assert lighter.activations < plain.activations
    assert plain.text > 0 and lighter.text == 0


def test_dry_run_prints_the_plan_for_the_14b_recipe():
    from t2vturbo_cli.main import app

    res = CliRunner().invoke(app, ["distill", str(RECIPES / "wan2.1-t2v-14b.yaml"), "--dry-run", "--world-size", "8"])
    assert "memory plan: " in res.output and "14.60 B network parameters" in res.output
    assert "fsdp x8" in res.output and "smallest GPU that fits" in res.output
    row = next(line for line in res.output.splitlines() if line.strip().startswith("network (frozen)"))
    ddp, fsdp, offload = (float(x) for x in row.split()[-3:])
    assert fsdp == pytest.approx(ddp / 8, rel=0.01) and offload == 0
