"""T2V-Turbo-v2's motion guidance in our recipe (``distill.motion``): the temporal-attention prior, the teacher's
motion-guided ODE step, and a student that learns the motion projections and samples with them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2vturbo.config import load_recipe
from t2vturbo.errors import ConfigError
from t2vturbo.tiny.teacher import build_tiny_teacher

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def parts():
    p = build_tiny_teacher(seed=3)
    p.unet.eval()
    return p


def _inputs(parts, b=2, frames=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, frames, 8, 8, generator=gen, dtype=dtype)
    cond = parts.encode_text(["a red circle moving left"] * b).to(dtype)
    return x, cond


def test_recording_the_temporal_attention_keeps_the_forward(parts):
    from t2vturbo.teachers.motion import record_temporal_attention, temporal_attention_layers

    x, cond = _inputs(parts)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        plain = parts.denoise(x, t, cond)[1]
        with record_temporal_attention(parts.unet) as rec:
            recorded = parts.denoise(x, t, cond)[1]
        after = parts.denoise(x, t, cond)[1]
    layers = temporal_attention_layers(parts.unet)
    assert len(layers) == 4  # two CrossAttnUpBlock3D x (layers_per_block + 1) temporal transformers
    assert len(rec.probs) == len(layers)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, plain)  # the processors are restored
    for p in rec.probs:
        assert p.shape[-2:] == (4, 4)  # frames x frames
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert not any("get_attention_scores" in layer.__dict__ for layer in layers)


def test_motion_energy_vanishes_on_the_reference_and_its_score_is_the_gradient(parts):
    from t2vturbo.motion import motion_prior_score

    unet = parts.unet.double()
    try:
        x, cond = _inputs(parts, dtype=torch.float64)
        t = torch.tensor([600, 600])
        score, _, eps, energy = motion_prior_score(parts, x, t, x.clone(), cond, loss_scale=100.0)
        assert float(energy) == 0.0 and float(score.abs().max()) == 0.0
        ref = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        score, _, eps, energy = motion_prior_score(parts, x, t, ref, cond, loss_scale=100.0)
        assert float(energy) > 0 and float(score.abs().max()) > 0
        with torch.no_grad():
            torch.testing.assert_close(eps, parts.denoise(x, t, cond)[1])  # the same forward's prediction
        d = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        h = 1e-4
        plus = motion_prior_score(parts, x + h * d, t, ref, cond, loss_scale=100.0)[3]
        minus = motion_prior_score(parts, x - h * d, t, ref, cond, loss_scale=100.0)[3]
        fd = (float(plus) - float(minus)) / (2 * h)
        assert fd == pytest.approx(float((score * d).sum()), rel=1e-3)
        # each clip's energy is its own: the score of clip 0 does not depend on the batch it came with
        alone = motion_prior_score(parts, x[:1], t[:1], ref[:1], cond[:1], loss_scale=100.0)[0]
        torch.testing.assert_close(alone, score[:1])
    finally:
        unet.float()


def test_inversion_follows_the_reference_reverse_step_up_to_each_index(parts):
    from t2vturbo.motion import invert_latents

    x0, cond = _inputs(parts, seed=2)
    solver = torch.tensor([99, 199, 299, 399])  # N = 10 of T = 1000: step ratio 100
    abar = parts.schedule.alphas_cumprod.float()
    with torch.no_grad():
        got = invert_latents(parts, x0, torch.tensor([0, 2]), solver, cond, step_ratio=100)

        def by_hand(x, upto):
            for t in solver[: upto + 1].tolist():
                eps = parts.denoise(x, torch.full((x.shape[0],), t), cond[: x.shape[0]])[1]
                a_t, a_p = abar[t], abar[max(t - 100, 0)]
                x = (x - (1 - a_p).sqrt() * eps) * (a_t / a_p).sqrt() + (1 - a_t).sqrt() * eps
            return x

        torch.testing.assert_close(got[:1], by_hand(x0[:1], 0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1:], by_hand(x0[1:], 2), atol=1e-5, rtol=1e-5)


def test_guided_noise_is_the_reference_form():
    from t2vturbo.motion import guided_noise

    eps, score = torch.ones(2, 1, 1, 1, 1), torch.full((2, 1, 1, 1, 1), 2.0)
    abar = torch.tensor([0.25, 0.81])
    got = guided_noise(eps, score, torch.tensor([0.05, 0.0]), abar).flatten()
    torch.testing.assert_close(got, torch.tensor([1 - 0.05 * (1 - 0.5) ** 0.5 * 2, 1.0]))


def test_motion_recipe_values_are_checked(clips):
    for bad in ("distill.motion.scale=-1", "distill.motion.percentage=0", "distill.motion.percentage=1.5",
                "distill.motion.loss_scale=0"):
        with pytest.raises(ConfigError, match="distill.motion"):
            load_recipe(TINY, small_distill_overrides(clips, **dict([bad.split("=")])))
    with pytest.raises(ConfigError, match="distill.motion.scale: expected a number"):
        load_recipe(TINY, small_distill_overrides(clips, **{"distill.motion.scale": "fast"}))


def test_distilling_with_motion_trains_the_projections_and_the_student_samples_with_them(clips, tmp_path):
    from t2vturbo.distill import Distiller
    from t2vturbo.formats import load_any_student
    from t2vturbo.teachers import load_teacher

    ov = small_distill_overrides(clips, steps=2, **{
        "distill.motion.scale": 0.05, "distill.motion.percentage": 1.0, "distill.num_ddim_timesteps": 10,
        "distill.skip": 100, "sample.prompts": "[]", "rewards": "[]", "train.num_threads": 1,
        "train.gradient_checkpointing": True})  # the score's backward then recomputes the recorded attention
    d = Distiller(load_recipe(TINY, ov), tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    motion = d.network.motion_condition
    assert float(motion.motion_cond_proj.weight.detach().abs().max()) == 0.0  # starts as a no-op
    assert all(p.requires_grad for p in motion.parameters())
    trained = {id(p) for g in d.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in trained for p in motion.parameters())

    # the teacher's step: the motion prior moves x_prev on the active samples only, by the reference's amount
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        latents = d.teacher.encode_video(pixels)
        cond = d.teacher.encode_text(["a red ball", "a red ball"])
    step = d.stepper
    uncond = step.uncond.expand(2, -1, -1)
    index = torch.tensor([9, 3])  # percentage 1.0: both active
    t_start, t_end = step.schedule.solver_pair(index, 100, step.solver_t)
    x_t = step.schedule.add_noise(latents, torch.randn(latents.shape, generator=gen), t_start)
    w = torch.tensor([6.0, 6.0])
    from t2vturbo.consistency import guidance_embedding

    w_emb = guidance_embedding(w, 256)
    from t2vturbo.motion import motion_step_inputs

    inputs = motion_step_inputs(d.motion, index, latents, d.recipe.distill.num_ddim_timesteps,
                                d.recipe.distill.guidance_embed_dim)
    assert inputs.scale.tolist() == pytest.approx([0.05, 0.05])
    plain_prev, _ = step.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None, None)
    off = dataclasses.replace(inputs, active=torch.tensor([False, True]))
    off.scale = torch.tensor([0.0, 0.05])
    guided_prev, _ = step.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None, off)
    torch.testing.assert_close(guided_prev[0], plain_prev[0])  # inactive sample: unchanged
    assert float((guided_prev[1] - plain_prev[1]).abs().max()) > 0
    assert off.energy > 0

    # the prior is the teacher's (adapter off), not the student's: checked with a student that differs from it
    from t2vturbo.motion import guided_noise, invert_latents, motion_prior_score
    from t2vturbo.student import teacher_mode

    saved = {n: p.detach().clone() for n, p in d.network.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        for n, p in d.network.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=gen)
    with teacher_mode(d.network):
        ref = invert_latents(d.teacher, latents, index, step.solver_t, cond)
        score = motion_prior_score(d.teacher, x_t, t_start, ref, cond, None, 100.0)[0]
    student_score = motion_prior_score(d.teacher, x_t, t_start,
                                       invert_latents(d.teacher, latents, index, step.solver_t, cond),
                                       cond, None, 100.0)[0]
    assert float((student_score - score).abs().max()) > 1e-6  # the check below can tell them apart
    zeros = torch.zeros_like(x_t)
    got = step.motion_guided(zeros, x_t, t_start, cond, None, dataclasses.replace(inputs))
    abar = step.schedule.alphas_cumprod[t_start]
    torch.testing.assert_close(got, guided_noise(zeros, score, inputs.scale, abar), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        for n, p in d.network.named_parameters():
            if n in saved:
                p.copy_(saved[n])

    # two training steps: the motion projections move, the student file holds them, student.json records them
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    d.train()
    after = motion.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    path = d.save_final()
    state = load_file(path / "student.safetensors")
    assert {"motion_condition.motion_cond_proj.weight", "motion_condition.combine_proj.weight"} <= set(state)
    meta = json.loads((path / "student.json").read_text())
    assert meta["motion"] == {"scale": 0.05, "percentage": 1.0, "loss_scale": 100.0}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["motion_energy"] > 0 for r in rows if "loss_cd" in r)

    # loading it back: a motion-guided student (the sampler's v2 path), the weights as trained
    fresh = load_teacher("tiny", device="cpu")
    load_any_student(path, fresh)
    assert fresh.supports_motion is True
    torch.testing.assert_close(fresh.unet.motion_condition.combine_proj.weight, after["combine_proj.weight"])

    # the CLI samples it with its own motion settings, and refuses motion guidance for a v1 student
    from t2vturbo_cli.main import app

    res = CliRunner().invoke(app, ["sample", "a red circle moving left", "--student", str(path), "--frames", "4",
                                   "--height", "32", "--width", "32", "-o", str(tmp_path / "v.gif")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "v.gif").is_file()
    for fmt in ("diffusers", "lora"):  # export: the motion-free student, and t2vturbo.json says so
        res = CliRunner().invoke(app, ["export", str(path), "--format", fmt, "--out", str(tmp_path / fmt)])
        assert res.exit_code == 0, res.output
        info = json.loads((tmp_path / fmt / "t2vturbo.json").read_text())
        assert info["motion_guidance"].startswith("dropped")
    exported = load_file(next((tmp_path / "diffusers" / "unet").glob("*.safetensors")))
    assert not any("motion" in k or "combine_proj" in k for k in exported)
    res = CliRunner().invoke(app, ["sample", "a red circle moving left", "--model", "tiny", "--teacher",
                                   "--motion-guidance", "0.05", "-o", str(tmp_path / "t.gif")])
    assert res.exit_code != 0 and "needs a T2V-Turbo-v2 motion-guided student" in res.output
    assert not (tmp_path / "t.gif").exists()


def test_a_v1_recipe_has_no_motion_and_a_wan_teacher_refuses_it(clips, tmp_path):
    from t2vturbo.distill import Distiller

    d = Distiller(load_recipe(TINY, small_distill_overrides(clips, **{"rewards": "[]", "sample.prompts": "[]"})),
                  tmp_path / "v1", progress=False, log=lambda m: None)
    d.setup()
    assert d.motion is None and not hasattr(d.network, "motion_condition")
    ov = small_distill_overrides(clips, **{"model.teacher": "tiny-wan", "distill.motion.scale": 0.05,
                                           "rewards": "[]", "sample.prompts": "[]"})
    with pytest.raises(ConfigError, match="distill.motion needs a UNet3D-family teacher"):
        Distiller(load_recipe(TINY, ov), tmp_path / "wan", progress=False, log=lambda m: None).setup()
