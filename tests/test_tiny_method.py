"""The defects that kept the method from showing on the tiny world: unclamped reward input, dropout in the
teacher pass, and sample shapes that ignored the model; plus the shipped teacher's accuracy (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from typer.testing import CliRunner

from t2vturbo.config import load_recipe
from t2vturbo.distill import Distiller
from t2vturbo.rewards import RewardModel, register_reward

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"

SEEN: list[tuple[float, float]] = []


class _RecordingReward(RewardModel):
    """Records the range of the pixels it is given; scores their mean (so gradients reach the pixels)."""

    kind = "image"

    def forward(self, frames, prompts):
        SEEN.append((float(frames.min()), float(frames.max())))
        return frames.mean(dim=(1, 2, 3, 4))


@register_reward("test-recording", kind="image")
def _recording(checkpoint=None, device="cpu", dtype=torch.float32, **kw):
    return _RecordingReward()


def _cli(*args):
    from t2vturbo_cli.main import app

    return CliRunner().invoke(app, list(args))


def test_decoded_frames_are_clamped_and_pass_no_gradient_outside_0_1():
    from t2vturbo.teachers import decode_latents, load_teacher

    parts = load_teacher("tiny")
    lat = (torch.randn(1, 4, 2, 12, 12, generator=torch.Generator().manual_seed(0)) * 20).requires_grad_(True)
    pix = decode_latents(parts, lat)
    assert float(pix.detach().min()) == 0.0 and float(pix.detach().max()) == 1.0  # far out of range before
    pix.sum().backward()
    # a latent pixel whose every decoded value was clamped gets no gradient: the reward cannot push it further out
    assert float((lat.grad == 0).float().mean()) > 0.1


def test_rewards_see_clamped_frames_during_distillation(tmp_path):
    clips = write_clip_folder(tmp_path / "clips", bad=False)
    ov = small_distill_overrides(clips, steps=1, rewards="[{name: test-recording, weight: 1.0, frames: 2}]",
                                 **{"sample.prompts": "[]"})
    recipe = load_recipe(TINY, ov)
    d = Distiller(recipe, tmp_path / "run", log=lambda m: None, progress=False)
    d.setup()
    SEEN.clear()
    pixels, captions = d.stream.next_batch()
    # make the single-step prediction decode far out of range: scale the guidance projection's output up
    with torch.no_grad():
        d.network.time_embedding.cond_proj.weight.normal_(0, 50.0)
    loss, _ = d.training_step(pixels, captions)
    assert SEEN, "the reward was not called"
    lo, hi = SEEN[-1]
    assert 0.0 <= lo and hi <= 1.0


def test_teacher_and_target_passes_are_deterministic_in_train_mode(tmp_path):
    clips = write_clip_folder(tmp_path / "clips", bad=False)
    ov = small_distill_overrides(clips, steps=1, **{"lora.dropout": 0.5, "sample.prompts": "[]"})
    d = Distiller(load_recipe(TINY, ov), tmp_path / "run", log=lambda m: None, progress=False)
    d.setup()
    step = d.stepper
    assert d.network.training
    drop = [m for m in step.base_dropouts if m.p > 0]
    assert drop, "the tiny UNet carries diffusers' Dropout(0.1) in its temporal convs"
    assert any(m.p > 0 for m in step.lora_dropouts)
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, 4, 16, 16, generator=gen)
    t_start, t_end = torch.tensor([499]), torch.tensor([479])
    from t2vturbo.consistency import guidance_embedding
    from t2vturbo.teachers import encode_prompts

    cond = encode_prompts(d.teacher, ["a red circle moving left"])
    w = torch.tensor([6.0])
    with torch.no_grad():  # a non-zero adapter, so the target's LoRA path (and its dropout) matters
        for n, p in d.network.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    args = (x_t, t_start, t_end, cond, step.uncond, w, guidance_embedding(w, 256), None)
    a = step.teacher_and_target(*args)
    b = step.teacher_and_target(*args)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert d.network.training and all(m.training for m in step.lora_dropouts)  # flags restored for the student pass
    # and the student's own forward still has LoRA dropout: two passes differ
    from t2vturbo.teachers import call_unet

    emb = guidance_embedding(w, 256)
    with torch.no_grad():
        s1 = call_unet(d.network, x_t, t_start, cond, timestep_cond=emb)
        s2 = call_unet(d.network, x_t, t_start, cond, timestep_cond=emb)
    assert not torch.equal(s1, s2)


def test_sampling_defaults_come_from_the_student_then_the_model():
    from t2vturbo.defaults import sampling_defaults
    from t2vturbo.teachers import load_teacher
    from t2vturbo.tiny import teacher as tiny

    parts = load_teacher("tiny")
    native = parts.native_video()
    assert native == {"frames": tiny.FRAMES, "height": tiny.HEIGHT, "width": tiny.WIDTH, "fps": tiny.FPS}
    t = sampling_defaults(parts, None, "teacher")
    assert (t.steps, t.guidance, t.frames, t.height) == (50, tiny.TEACHER_GUIDANCE, 8, tiny.HEIGHT)
    meta = {"video": {"frames": 6, "height": 16, "width": 20, "fps": 4}, "default_guidance": 3.0, "default_steps": 2}
    s = sampling_defaults(parts, meta, "student")
    assert (s.frames, s.height, s.width, s.fps, s.guidance, s.steps) == (6, 16, 20, 4, 3.0, 2)
    bare = sampling_defaults(parts, {}, "student")
    assert bare.steps == 4 and bare.frames == tiny.FRAMES


def test_diffusers_folder_native_shape_from_sample_size_and_vae_factor(tmp_path):
    from t2vturbo.teachers import DEFAULTS_FILE, load_teacher
    from t2vturbo.tiny import teacher as tiny

    parts = load_teacher("tiny")
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(parts, name).save_pretrained(tmp_path / name)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.SCHEDULER_CONFIG))
    folder = load_teacher(str(tmp_path))
    assert folder.native_video() == {"frames": 16, "height": tiny.HEIGHT, "width": tiny.WIDTH, "fps": 8}
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"frames": 5, "fps": 12}))
    assert load_teacher(str(tmp_path)).native_video()["frames"] == 5


def test_sample_cli_uses_the_native_shape_without_options(tmp_path):
    from t2vturbo.tiny import teacher as tiny
    from t2vturbo.video import read_video

    out = tmp_path / "t.mp4"
    res = _cli("sample", "a red circle moving left", "--model", "tiny", "--teacher", "--steps", "3", "-o", str(out))
    assert res.exit_code == 0, res.output
    video = read_video(out)
    assert tuple(video.shape) == (tiny.FRAMES, 3, tiny.HEIGHT, tiny.WIDTH)


def test_sample_cli_uses_the_students_recorded_shape(tmp_path):
    from t2vturbo.student import LoraSettings, make_student, save_student
    from t2vturbo.teachers import load_teacher
    from t2vturbo.video import read_video

    parts = load_teacher("tiny")
    make_student(parts, LoraSettings(rank=2, dropout=0.0))
    save_student(parts, tmp_path / "student", {"base_model": "tiny", "default_steps": 2,
                                               "default_guidance": 3.0,
                                               "video": {"frames": 4, "height": 16, "width": 16, "fps": 4}})
    out = tmp_path / "s.mp4"
    res = _cli("sample", "a red circle moving left", "--student", str(tmp_path / "student"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output
    assert tuple(read_video(out).shape) == (4, 3, 16, 16)


@pytest.mark.slow
def test_shipped_teacher_at_50_steps_draws_what_the_caption_says():
    from t2vturbo.tiny.evaluate import Variant, evaluate
    from t2vturbo.tiny.teacher import TEACHER_GUIDANCE

    prompts = ["a red circle moving left", "a blue square moving up", "a yellow triangle moving right",
               "a green square moving down", "a blue circle moving right", "a red triangle moving down"]
    row, _ = evaluate(Variant("teacher", "teacher", 50, TEACHER_GUIDANCE), prompts, seeds=[0, 1])
    assert row["all"] >= 0.80, row  # the bar; on all 48 captions it is 0.92 (docs/tiny-world.md)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_videos():
    from t2vturbo.tiny.evaluate import bootstrap_ci

    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_ci([True, False] * 24)
    assert lo < 0.5 < hi and hi - lo < 0.35
    lo2, hi2 = bootstrap_ci([True, False] * 96)
    assert lo2 < 0.5 < hi2 and hi2 - lo2 < hi - lo
