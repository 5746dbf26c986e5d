import pytest
import torch
from typer.testing import CliRunner

from t2vturbo.sampling import sample_video
from t2vturbo.schedules import ddim_timesteps
from t2vturbo.student import LoraSettings, make_student
from t2vturbo.tiny import build_tiny_teacher


@pytest.fixture(scope="module")
def parts():
    p = build_tiny_teacher()
    p.unet.eval()
    p.vae.eval()
    p.text_encoder.eval()
    make_student(p, LoraSettings(rank=4, dropout=0.0))
    with torch.no_grad():
        for _name, q in p.unet.named_parameters():
            if q.requires_grad:
                q.normal_(0, 0.02)
    return p


def _counting(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_calls_the_unet_exactly_steps_times(parts, steps):
    calls, handle = _counting(parts.unet)
    try:
        out = sample_video(parts, ["a red circle moving left"], steps=steps, frames=2, height=32, width=32, seed=3)
    finally:
        handle.remove()
    assert len(calls) == steps == out.unet_calls
    assert out.videos.shape == (1, 2, 3, 32, 32)
    assert out.videos.min() >= 0 and out.videos.max() <= 1


def test_teacher_cfg_is_one_batched_call_per_step(parts):
    calls, handle = _counting(parts.unet)
    try:
        out = sample_video(parts, ["a", "b"], steps=5, mode="teacher", frames=2, height=32, width=32)
    finally:
        handle.remove()
    assert len(calls) == 5 and out.timesteps == parts.schedule.ddim_timesteps(5) == ddim_timesteps(5) \
        == [801, 601, 401, 201, 1]


def test_same_seed_same_video_different_seed_differs(parts):
    kw = dict(steps=2, frames=2, height=32, width=32)
    a = sample_video(parts, ["a blue square moving up"] * 2, seed=5, **kw).videos
    b = sample_video(parts, ["a blue square moving up"] * 2, seed=5, **kw).videos
    c = sample_video(parts, ["a blue square moving up"], seed=6, **kw).videos
    assert torch.equal(a, b)
    # video i uses seed + i: the second video of seed 5 is the first of seed 6 (batch size changes only rounding)
    torch.testing.assert_close(a[1], c[0], atol=1e-4, rtol=0)
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_guidance_changes_the_student_output(parts):
    kw = dict(steps=1, frames=2, height=32, width=32, seed=0)
    a = sample_video(parts, ["x"], guidance=2.0, **kw).videos
    b = sample_video(parts, ["x"], guidance=12.0, **kw).videos
    assert (a - b).abs().max() > 1e-5


def test_sample_cli_writes_a_playable_mp4(tmp_path, monkeypatch):
    from t2vturbo_cli.main import app

    from t2vturbo.video import read_video

    out = tmp_path / "cat.mp4"
    res = CliRunner().invoke(app, ["sample", "a red circle moving right", "--steps", "2", "--frames", "4",
                                   "--height", "32", "--width", "48", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "s/video" in res.output
    video = read_video(out)
    assert video.shape == (4, 3, 32, 48)
    # PNG folder and gif by extension
    res = CliRunner().invoke(app, ["sample", "x", "y", "--steps", "1", "--frames", "2", "--height", "32",
                                   "--width", "32", "--out", str(tmp_path / "clip.gif"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "clip-0.gif").is_file() and (tmp_path / "clip-1.gif").is_file()


def test_sample_cli_bad_student_is_one_line(tmp_path):
    from t2vturbo_cli.main import app

    res = CliRunner().invoke(app, ["sample", "x", "--student", str(tmp_path / "missing"), "--device", "cpu",
                                   "--frames", "2", "--height", "32", "--width", "32"])
    assert res.exit_code == 2
    assert "student not found" in res.output and "Traceback" not in res.output


def test_v_prediction_zero_snr_teacher_matches_stock_diffusers(tmp_path):
    """A UNet3D teacher on the zero-terminal-SNR v-prediction schedule samples as stock diffusers does
    (TextToVideoSDPipeline + DDIMScheduler with rescale_betas_zero_snr, trailing spacing): the prediction type is
    converted in one place (VPSchedule.to_x0_eps)."""
    import json

    from diffusers import DDIMScheduler, TextToVideoSDPipeline
    from diffusers.utils import logging as diffusers_logging

    from t2vturbo.schedules import VPSchedule
    from t2vturbo.tiny import build_tiny_teacher
    from t2vturbo.tiny.teacher import ZERO_SNR_SCHEDULER_CONFIG

    parts = build_tiny_teacher(seed=3)
    parts.schedule = VPSchedule.from_scheduler_config(ZERO_SNR_SCHEDULER_CONFIG)
    prompt = "a green square moving down"
    ours = sample_video(parts, [prompt], steps=3, guidance=7.5, mode="teacher", frames=2, height=24, width=24,
                        seed=9)
    assert ours.timesteps == [999, 666, 332]
    diffusers_logging.set_verbosity_error()
    pipe = TextToVideoSDPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                 unet=parts.unet, scheduler=DDIMScheduler.from_config(ZERO_SNR_SCHEDULER_CONFIG))
    pipe.vae.register_to_config(scaling_factor=parts.vae_scale)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(prompt, num_inference_steps=3, guidance_scale=7.5, num_frames=2, height=24, width=24,
                 generator=torch.Generator().manual_seed(9), output_type="pt").frames
    # CFG 7.5 on a random UNet magnifies float32 rounding (diffusers guides v, we guide the (x0, eps) it gives)
    diff = (ours.videos - stock).abs()
    assert diff.mean() < 1e-4 and diff.max() < 5e-3, (float(diff.mean()), float(diff.max()))
    assert json.dumps(parts.schedule.describe())  # what a student records is JSON
