"""The Wan2.1 family on the tiny Wan built in code (real diffusers classes at test sizes, random weights):
the flow schedule against diffusers, teacher sampling and the exported student against stock WanPipeline, the
student at init, the flow consistency step by hand, a distillation run through the CLI, the full-size config on
the meta device."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from t2vturbo.schedules import FlowSchedule, flow_sigmas
from t2vturbo.student import LoraSettings, make_student, save_student
from t2vturbo.teachers import load_teacher
from t2vturbo.teachers.wan import WanTeacher, build_tiny_wan

PROMPT = "a red circle moving left"
SHAPE = dict(frames=9, height=32, width=32)


def _stock_pipeline(parts: WanTeacher, scheduler):
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=parts.tokenizer, text_encoder=parts.text_encoder, transformer=parts.transformer,
                       vae=parts.vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_flow_sigmas_and_timesteps_match_diffusers(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler

    schedule = FlowSchedule(shift)
    for n in (1, 4, 50):
        euler = FlowMatchEulerDiscreteScheduler(shift=shift)
        euler.set_timesteps(n)
        lcm = FlowMatchLCMScheduler.from_config(schedule.lcm_scheduler_config())
        lcm.set_timesteps(n)
        assert torch.equal(euler.sigmas, flow_sigmas(n, shift))
        assert torch.equal(euler.timesteps, torch.tensor(schedule.timesteps(n)))
        assert torch.equal(lcm.timesteps, torch.tensor(schedule.consistency_timesteps(n)))
    assert schedule.timesteps(4)[0] == 1000.0


def test_flow_parametrisation_round_trips():
    schedule = FlowSchedule(3.0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 3, 4, 4, generator=g), torch.randn(2, 16, 3, 4, 4, generator=g)
    t = torch.tensor([1000.0, 250.0])
    x = schedule.add_noise(x0, eps, t)
    v = schedule.training_target(x0, eps, t)
    got_x0, got_eps = schedule.to_x0_eps(v, x, t)
    torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)
    # the Euler step x - (s - s') v lands where (1 - s') x0 + s' eps does
    s, s_next = 0.25, 0.1
    torch.testing.assert_close(schedule.step(got_x0[1:], got_eps[1:], torch.tensor([100.0])),
                               x[1:] - (s - s_next) * v[1:], atol=1e-5, rtol=1e-5)
    assert torch.equal(schedule.step(x0, eps, None), x0)
    # f(x, s) = x - s v is the x0 prediction, exactly x at s = 0
    assert torch.equal(schedule.consistency_output(x, got_x0, t), got_x0)
    zero = torch.zeros(2)
    torch.testing.assert_close(schedule.to_x0_eps(v, x, zero)[0], x)


def test_flow_consistency_step_by_hand():
    """One distillation step's teacher solve and target, against the formulas written out with numbers."""
    schedule = FlowSchedule(1.0)  # no shift: 4 sigmas spaced evenly over [0.001, 1]
    grid = schedule.solver_grid(4)
    assert torch.allclose(grid, torch.tensor([1.0, 334.0, 667.0, 1000.0]), atol=1e-3)
    t_start, t_end = schedule.solver_pair(torch.tensor([2]), 250, grid)  # skip 250 of 1000 with N = 4: one step
    assert torch.equal(t_start, grid[2:3])  # s = 0.667
    assert torch.allclose(t_end, grid[1:2])
    x = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1, 1)
    v_c, v_u = torch.tensor([0.5, 0.1]).view_as(x), torch.tensor([0.3, -0.1]).view_as(x)
    w = 2.0
    x0_c, eps_c = schedule.to_x0_eps(v_c, x, t_start)
    x0_u, eps_u = schedule.to_x0_eps(v_u, x, t_start)
    from t2vturbo.consistency import lcm_guidance

    x_prev = schedule.step(lcm_guidance(x0_c, x0_u, torch.tensor(w)), lcm_guidance(eps_c, eps_u, torch.tensor(w)),
                           t_end)
    s, s_end = float(t_start) / 1000, float(t_end) / 1000
    v_hat = v_c + w * (v_c - v_u)  # CFG on the velocity, then one Euler step
    torch.testing.assert_close(x_prev, x - (s - s_end) * v_hat, atol=1e-6, rtol=1e-6)
    assert torch.allclose(x_prev.flatten(), torch.tensor([1.0 - 0.333 * 0.9, -2.0 - 0.333 * 0.5]), atol=1e-5)


def test_teacher_sampling_equals_stock_wan_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2vturbo.sampling import sample_video

    parts = build_tiny_wan()
    ours = sample_video(parts, [PROMPT], steps=3, guidance=5.0, mode="teacher", seed=4, **SHAPE)
    pipe = _stock_pipeline(parts, FlowMatchEulerDiscreteScheduler.from_config(parts.schedule.scheduler_config()))
    theirs = pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, num_frames=9, height=32, width=32,
                  generator=torch.Generator().manual_seed(4), output_type="pt").frames
    assert ours.videos.shape == theirs.shape == (1, 9, 3, 32, 32)
    torch.testing.assert_close(ours.videos, theirs.float(), atol=1e-5, rtol=0)


def test_fresh_student_equals_teacher_and_guidance_enters_the_time_embedding():
    from t2vturbo.consistency import guidance_embedding

    parts = build_tiny_wan()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    t = torch.tensor([900.0, 120.0])
    text = parts.encode_text([PROMPT, ""])
    with torch.no_grad():
        before = parts.denoise(x, t, text)[0]
        make_student(parts, LoraSettings(rank=4, dropout=0.0))
        w_emb = guidance_embedding(torch.tensor([3.0, 6.0]))
        after = parts.denoise(x, t, text, guidance_cond=w_emb)[0]
        torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
        parts.transformer.condition_embedder.time_embedder.cond_proj.weight.normal_(std=0.1, generator=g)
        moved = parts.denoise(x, t, text, guidance_cond=w_emb)[0]
        again = parts.denoise(x, t, text)[0]  # the hook is gone after each call
    assert (moved - before).abs().max() > 1e-3
    torch.testing.assert_close(again, before, atol=1e-6, rtol=0)
    names = [n for n, p in parts.transformer.named_parameters() if p.requires_grad]
    assert "condition_embedder.time_embedder.cond_proj.weight" in names
    assert all("lora_" in n or "cond_proj" in n for n in names)
    assert any(".attn1.to_q.lora_A" in n for n in names) and any(".ffn.net.2.lora_B" in n for n in names)


def test_decode_only_the_frames_a_reward_needs():
    parts = build_tiny_wan()
    pixels = torch.rand(1, 9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = parts.encode_video(pixels)
        assert z.shape == (1, 16, 3, 4, 4)
        full = parts.decode_video(z)
        some = parts.decode_video(z, frames=[0, 3])  # needs latent frames 0 and 1 only (causal VAE)
    assert full.shape == (1, 9, 3, 32, 32) and some.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(some, full[:, [0, 3]], atol=1e-5, rtol=0)


def test_distill_step_trains_only_lora_and_guidance_and_the_reward_changes_the_gradient(tmp_path):
    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    grads = {}
    for name, rewards in (("mixed", None), ("none", "rewards=[]")):
        overrides = ["train.batch_size=1", "sample.prompts=[]", "lora.rank=4"] + ([rewards] if rewards else [])
        d = Distiller(load_recipe(REPO / "recipes" / "tiny-wan.yaml", overrides), tmp_path / name, progress=False,
                      log=lambda m: None)
        d.setup()
        pixels, captions = d.stream.next_batch()
        loss, metrics = d.training_step(pixels, captions)
        assert torch.isfinite(loss), metrics
        loss.backward()
        got = {n: p.grad.clone() for n, p in d.network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got and all("lora_" in n or "cond_proj" in n for n in got), sorted(got)[:3]
        grads[name] = torch.cat([g.flatten() for _, g in sorted(got.items())])
    assert (grads["mixed"] - grads["none"]).abs().max() > 1e-6


def test_cli_distill_sample_export_round_trip(tmp_path):
    from diffusers import WanPipeline
    from typer.testing import CliRunner

    from cli.main import app
    from t2vturbo.formats import load_any_student
    from t2vturbo.sampling import sample_video

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(REPO / "recipes" / "tiny-wan.yaml"), "train.max_steps=2",
                              "train.checkpoint_every=2", "--output-dir", str(run)])
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "student" / "student.json").read_text())
    assert meta["base_model"] == "tiny-wan" and meta["schedule"]["kind"] == "flow"
    res = runner.invoke(app, ["sample", PROMPT, "--student", str(run / "student"), "-o", str(tmp_path / "v.mp4")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "v.mp4").stat().st_size > 0
    res = runner.invoke(app, ["export", str(run / "student"), "--out", str(tmp_path / "exp"), "--guidance", "4.0"])
    assert res.exit_code == 0, res.output
    pipe = WanPipeline.from_pretrained(tmp_path / "exp")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "FlowMatchLCMScheduler"
    torch.manual_seed(11)  # stock FlowMatchLCMScheduler re-noises from torch's global generator
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, num_frames=9, height=32, width=32,
                  generator=torch.Generator().manual_seed(11), output_type="pt").frames
    parts = load_teacher("tiny-wan")
    load_any_student(run / "student", parts)
    ours = sample_video(parts, [PROMPT], steps=4, guidance=4.0, mode="student", seed=11, **SHAPE).videos
    assert (ours - theirs.float()).abs().mean() < 1 / 255


def test_wan_folder_loads_like_tiny_wan(tmp_path):
    from t2vturbo.sampling import sample_video
    from t2vturbo.teachers.wan import save_wan_teacher

    built = build_tiny_wan()
    save_wan_teacher(built, tmp_path / "wan")
    loaded = load_teacher(str(tmp_path / "wan"))
    assert isinstance(loaded, WanTeacher) and loaded.schedule == built.schedule
    a = sample_video(built, [PROMPT], steps=2, mode="teacher", seed=0, **SHAPE).videos
    b = sample_video(loaded, [PROMPT], steps=2, mode="teacher", seed=0, **SHAPE).videos
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_missing_wan_weights_name_the_hub_id(tmp_path):
    from t2vturbo.errors import MissingWeightError

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(MissingWeightError, match="hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        load_teacher(str(tmp_path / "w"))


def test_wan_shape_constraints_are_one_line_errors():
    from t2vturbo.errors import ConfigError
    from t2vturbo.sampling import sample_video

    parts = build_tiny_wan()
    with pytest.raises(ConfigError, match="1 \\+ 4 k"):
        sample_video(parts, [PROMPT], steps=1, frames=8, height=32, width=32)
    with pytest.raises(ConfigError, match="divisible by 16"):
        sample_video(parts, [PROMPT], steps=1, frames=9, height=24, width=32)


def test_full_size_wan_1_3b_on_the_meta_device():
    from diffusers import WanTransformer3DModel

    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**cfg)
        teacher = WanTeacher(transformer=transformer, vae=None, text_encoder=None, tokenizer=None, schedule=None)
        base = sum(p.numel() for p in transformer.parameters())
        targets = teacher.lora_targets()
        make_student(teacher, LoraSettings(rank=64, dropout=0.0))
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    assert 1.40e9 < base < 1.45e9  # the "1.3B" transformer: 1.42 B parameters
    assert len(targets) == 30 * 10
    proj = transformer.condition_embedder.time_embedder.cond_proj
    assert tuple(proj.weight.shape) == (256, 256)
    # rank 64 on 30 x (8 attention linears 1536x1536 + FFN 1536x8960 and back) + the 256x256 projection
    expected = 30 * (8 * 64 * (1536 + 1536) + 2 * 64 * (1536 + 8960)) + 256 * 256
    assert trainable == expected
    print(f"Wan2.1-T2V-1.3B transformer: {base / 1e9:.3f} B parameters; LoRA rank 64 + guidance: "
          f"{trainable / 1e6:.1f} M trainable")


def test_lora_export_loads_with_load_lora_weights_and_gives_the_same_frames(tmp_path):
    from diffusers import FlowMatchLCMScheduler, WanPipeline

    from t2vturbo.export import export_student
    from t2vturbo.formats import load_any_student
    from t2vturbo.sampling import sample_video
    from t2vturbo.teachers.wan import WAN_LORA_FILE, save_wan_teacher

    parts = build_tiny_wan()
    make_student(parts, LoraSettings(rank=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a student that is not the teacher
        for p in parts.transformer.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    student = save_student(parts, tmp_path / "student", {"base_model": "tiny-wan",
                                                                      "lora": {"rank": 4, "alpha": 8}})
    out = export_student(student, "tiny-wan", format="lora", out_dir=tmp_path / "lora", guidance=3.0)
    assert (out / WAN_LORA_FILE).is_file()
    save_wan_teacher(build_tiny_wan(), tmp_path / "base")
    pipe = WanPipeline.from_pretrained(tmp_path / "base")
    pipe.load_lora_weights(str(out))
    pipe.scheduler = FlowMatchLCMScheduler(shift=parts.schedule.shift)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(2)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, num_frames=9, height=32, width=32,
                  generator=torch.Generator().manual_seed(2), output_type="pt").frames
    ours_parts = load_teacher("tiny-wan")
    load_any_student(student, ours_parts)
    ours = sample_video(ours_parts, [PROMPT], steps=4, guidance=3.0, mode="student", seed=2, **SHAPE).videos
    plain = sample_video(load_teacher("tiny-wan"), [PROMPT], steps=4, mode="student", seed=2, **SHAPE).videos
    effect, gap = float((ours - plain).abs().mean()), float((ours - theirs.float()).abs().mean())
    assert effect > 1e-3 and gap < min(1 / 255, effect / 20), (effect, gap)  # the adapter matters, and it matches


def test_block_checkpointing_gives_the_same_gradients_and_bf16_trains(tmp_path):
    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    grads = {}
    for name, extra in (("plain", []), ("checkpointed", ["train.gradient_checkpointing=true"])):
        recipe = load_recipe(REPO / "recipes" / "tiny-wan.yaml",
                             ["train.batch_size=1", "sample.prompts=[]", "lora.rank=4", "rewards=[]", *extra])
        d = Distiller(recipe, tmp_path / name, progress=False, log=lambda m: None)
        d.setup()
        if name == "checkpointed":
            assert d.network.is_gradient_checkpointing
        pixels, captions = d.stream.next_batch()
        loss, _ = d.training_step(pixels, captions)
        assert torch.isfinite(loss)
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten().float() for _, p in sorted(d.network.named_parameters())
                                 if p.grad is not None])
    torch.testing.assert_close(grads["checkpointed"], grads["plain"], atol=1e-6, rtol=1e-4)
    # bf16 base + fp32 LoRA, in its own process (accelerate fixes the precision once per process)
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "t2vturbo_cli", "distill", str(REPO / "recipes" / "tiny-wan.yaml"),
                          "train.max_steps=1", "sample.prompts=[]", "model.dtype=bfloat16",
                          "train.mixed_precision=bf16", "--output-dir", str(tmp_path / "bf16"), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] is not None and row["loss"] == row["loss"]
