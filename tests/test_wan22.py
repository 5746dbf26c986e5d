"""The Wan2.2 family on the tiny two-expert Wan (``tiny-wan22``) and the tiny TI2V-5B (``tiny-wan22-5b``), both
built in code at diffusers' test sizes: teacher sampling, the exported student and the per-expert LoRA files against
stock ``WanPipeline``; the expert used at each timestep (at the boundary too) against the pipeline's; the step's
solver pairs across the boundary; the Wan2.2 VAE's partial decode; folders; a CLI run with resume and two
processes; the full-size configs on the meta device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from typer.testing import CliRunner

from t2vturbo.sampling import sample_video
from t2vturbo.student import LoraSettings, make_student, save_student
from t2vturbo.teachers import load_teacher
from t2vturbo.teachers.wan22 import Wan22Teacher, high_noise, save_wan22_teacher

PROMPT = "a red circle moving left"
SHAPES = {"tiny-wan22": dict(frames=9, height=32, width=32), "tiny-wan22-5b": dict(frames=9, height=64, width=64)}
SPECS = tuple(SHAPES)


def _cli(*args):
    from t2vturbo_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _pipe_kwargs(spec: str) -> dict:
    s = SHAPES[spec]
    return dict(num_frames=s["frames"], height=s["height"], width=s["width"], output_type="pt")


def _stock(teacher: Wan22Teacher, scheduler):
    pipe = teacher._pipeline(scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _euler(teacher):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(teacher.schedule.scheduler_config())


def _random_student(teacher, seed=3, scale=0.3):
    make_student(teacher, LoraSettings(rank=4, alpha=8, dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in teacher.network.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _record_experts(teacher):
    """Hooks that log (expert, the first sample's timestep) of every call of each transformer, and every sample's
    (expert, timestep) in ``samples``; returns (log, samples, handles)."""
    log, samples, handles = [], [], []

    def hook(module, args, kwargs, k):
        ts = kwargs["timestep"]
        ts = (ts if ts.ndim == 1 else ts[:, 0]).tolist()
        log.append((k, ts[0]))
        samples.extend((k, t) for t in ts)

    for k, tr in enumerate(teacher._transformers()):
        handles.append(tr.register_forward_pre_hook(lambda m, a, kw, k=k: hook(m, a, kw, k), with_kwargs=True))
    return log, samples, handles


# ---------------------------------------------------------------------------------------------- the experts
def test_the_expert_at_each_timestep_is_the_pipelines_including_at_the_boundary():
    """Stock WanPipeline's loop and the teacher route each step alike, with a boundary placed exactly on a grid
    timestep (both rounding ways of ratio x 1000) and just above it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    built = load_teacher("tiny-wan22")
    grid = FlowMatchEulerDiscreteScheduler.from_config(built.schedule.scheduler_config())
    grid.set_timesteps(6)
    on = float(grid.timesteps[2])  # a float32 timestep of the 6-step run
    # the boundary on it, a hair above it in float64 that is it in float32 (the pipeline's torch comparison says
    # high noise there, a float64 one would not), one float32 step above it, and the real 0.875
    ratios = [on / 1000, (on + 1e-5) / 1000, float(torch.tensor(on).nextafter(torch.tensor(1000.0))) / 1000, 0.875]
    for ratio in ratios:
        teacher = Wan22Teacher(transformer=built.transformer, transformer_2=built.transformer_2, boundary_ratio=ratio,
                               vae=built.vae, text_encoder=built.text_encoder, tokenizer=built.tokenizer,
                               schedule=built.schedule, stored_defaults=dict(built.stored_defaults))
        pipe = _stock(teacher, _euler(teacher))
        log, _, handles = _record_experts(teacher)
        try:
            pipe(PROMPT, num_inference_steps=6, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                 **_pipe_kwargs("tiny-wan22"))
            theirs, log[:] = list(log), []
            sample_video(teacher, [PROMPT], steps=6, guidance=1.0, mode="teacher", seed=0, **SHAPES["tiny-wan22"])
            ours = list(log)
        finally:
            for h in handles:
                h.remove()
        ts = [t for _, t in theirs]
        assert [t for _, t in ours] == ts and ts == [float(t) for t in grid.timesteps]
        assert [k for k, _ in ours] == [k for k, _ in theirs] == teacher.expert_at(torch.tensor(ts)).tolist()
        assert 0 < sum(k for k, _ in theirs) < 6  # the run crosses the boundary
        if ratio < 0.85:  # the boundary on the third timestep (in float32): it still goes to the high-noise expert
            assert [k for k, _ in theirs][2] == (0 if float(torch.tensor(ratio * 1000)) == on else 1)
    # exactly at the boundary: the high-noise expert (t >= boundary), the float32 value just below: the low-noise one
    below = float(torch.tensor(875.0).nextafter(torch.tensor(0.0)))
    assert high_noise(torch.tensor([875.0, below, 1000.0, 0.0]), 875.0).tolist() == [True, False, True, False]


def test_a_batch_that_mixes_experts_is_split_and_each_sample_gets_its_own_expert():
    teacher = load_teacher("tiny-wan22")
    _random_student(teacher, scale=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 3, 4, 4, generator=g)
    t = torch.tensor([900.0, 250.0, 875.0])
    text = teacher.encode_text([PROMPT, "", "a blue square"])
    from t2vturbo.consistency import guidance_embedding

    w_emb = guidance_embedding(torch.tensor([2.0, 4.0, 6.0]))
    with torch.no_grad():
        both, _ = teacher.denoise(x, t, text, guidance_cond=w_emb)
        for i in range(3):
            alone, _ = teacher.denoise(x[i:i + 1], t[i:i + 1], text[i:i + 1], guidance_cond=w_emb[i:i + 1])
            torch.testing.assert_close(both[i:i + 1], alone, atol=1e-5, rtol=0)
        # and the alone call ran the expert WanPipeline would: the high-noise one for 900 and 875, not for 250
        log, samples, handles = _record_experts(teacher)
        teacher.denoise(x, t, text, guidance_cond=w_emb)
        for h in handles:
            h.remove()
    assert len(log) == 2 and sorted(samples) == [(0, 875.0), (0, 900.0), (1, 250.0)]  # one call per expert


def test_each_expert_has_its_own_projection_and_the_unused_one_still_gets_a_gradient():
    teacher = load_teacher("tiny-wan22")
    x, text = torch.randn(2, 16, 3, 4, 4), teacher.encode_text([PROMPT, ""])
    t = torch.tensor([950.0, 100.0])
    with torch.no_grad():
        before, _ = teacher.denoise(x, t, text)
    assert len(teacher.lora_targets()) == 2 * 2 * 10  # 2 experts x 2 blocks x (8 attention + 2 FFN linears)
    assert len(teacher.lora_targets(["to_q"])) == 2 * 2 * 2  # a suffix names the module in both experts
    make_student(teacher, LoraSettings(rank=4, dropout=0.0))
    names = {n for n, p in teacher.network.named_parameters() if p.requires_grad}
    assert set(teacher.guidance_keys) <= names and len(teacher.guidance_keys) == 2
    assert {n.split(".")[0] for n in names if "lora_" in n} == {"transformer", "transformer_2"}
    from t2vturbo.consistency import guidance_embedding

    w_emb = guidance_embedding(torch.tensor([3.0, 3.0]))
    with torch.no_grad():
        fresh, _ = teacher.denoise(x, t, text, guidance_cond=w_emb)
        torch.testing.assert_close(fresh, before, atol=1e-6, rtol=0)
        teacher.transformer_2.condition_embedder.time_embedder.cond_proj.weight.normal_(std=0.1)
        moved, _ = teacher.denoise(x, t, text, guidance_cond=w_emb)
    assert torch.equal(moved[0], fresh[0]) and (moved[1] - fresh[1]).abs().max() > 1e-4  # only the low-noise sample
    # a graph through the high-noise expert alone still reaches every trainable parameter (zero for the unused
    # expert): what DDP needs when a rank's batch stays on one side of the boundary
    x0, _ = teacher.denoise(x[:1], t[:1], text[:1], guidance_cond=w_emb[:1])
    x0.square().mean().backward()
    params = dict(teacher.network.named_parameters())
    assert all(params[n].grad is not None for n in names)
    assert all(params[n].grad.abs().max() == 0 for n in names if n.startswith("transformer_2."))


def test_the_step_crosses_the_boundary_on_the_pipelines_experts_and_guidance_scale_2(tmp_path):
    """A solver pair (t_start >= boundary > t_end): the teacher's ODE step on the high-noise expert with w, the
    target on the low-noise one; a pair below the boundary: the teacher's CFG with guidance_scale_2's w."""
    from t2vturbo.config import load_recipe
    from t2vturbo.consistency import guidance_embedding, lcm_guidance
    from t2vturbo.distill import Distiller

    recipe = load_recipe(REPO / "recipes" / "tiny-wan22.yaml", ["train.batch_size=1", "sample.prompts=[]",
                                                                 "lora.rank=4", "rewards=[]"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    step, teacher = d.stepper, d.teacher
    grid, boundary = step.solver_t, teacher.boundary
    cross = int((grid >= boundary).nonzero()[0])  # the lowest grid point on the high-noise side
    t_start, t_end = teacher.schedule.solver_pair(torch.tensor([cross]), recipe.distill.skip, grid)
    assert t_start >= boundary > t_end
    x_t = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond, uncond = teacher.encode_text([PROMPT]), step.uncond
    w = torch.tensor([3.0])
    w_emb = guidance_embedding(w)
    log, _, handles = _record_experts(teacher)
    try:
        step.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None)
    finally:
        for h in handles:
            h.remove()
    assert log == [(0, float(t_start)), (1, float(t_end))]  # the teacher (cond + uncond, one call), the target
    # below the boundary the teacher's guided step uses w_2 = 0.75 w (guidance 5.0 / guidance_2 4.0)
    low = torch.tensor([5])
    t_start, t_end = teacher.schedule.solver_pair(low, recipe.distill.skip, grid)
    x_prev, _ = step.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        from t2vturbo.student import teacher_mode

        with teacher_mode(teacher.network):
            x0, eps = teacher.denoise(torch.cat([x_t, x_t]), torch.cat([t_start, t_start]), torch.cat([cond, uncond]))
    (x0_c, x0_u), (e_c, e_u) = x0.chunk(2), eps.chunk(2)
    w2 = torch.tensor([0.75 * 3.0])
    expect = teacher.schedule.step(lcm_guidance(x0_c, x0_u, w2), lcm_guidance(e_c, e_u, w2), t_end)
    torch.testing.assert_close(x_prev, expect, atol=1e-6, rtol=0)
    assert teacher.guidance_scale_2(5.0) == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------- against WanPipeline
@pytest.mark.parametrize("spec", SPECS)
def test_teacher_sampling_equals_stock_wan_pipeline(spec):
    teacher = load_teacher(spec)
    pipe = _stock(teacher, _euler(teacher))
    extra = {"guidance_scale_2": teacher.guidance_scale_2(5.0)} if teacher.experts is not None else {}
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0, generator=torch.Generator().manual_seed(4),
                  **extra, **_pipe_kwargs(spec)).frames.float()
    ours = sample_video(teacher, [PROMPT], steps=4, guidance=5.0, mode="teacher", seed=4, **SHAPES[spec]).videos
    assert ours.shape == theirs.shape == (1, 9, 3, SHAPES[spec]["height"], SHAPES[spec]["width"])
    assert float((ours - theirs).abs().mean()) < 1 / 255
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # in fact equal to float rounding


def test_ti2v_timesteps_are_expanded_per_token_as_the_pipeline_does():
    teacher = load_teacher("tiny-wan22-5b")
    x = torch.randn(2, 48, 3, 4, 6)
    got = teacher.timestep_input(torch.tensor([900.0, 30.0]), x)
    mask = torch.ones(1, 48, 3, 4, 6)  # WanPipeline: (mask[0][0][:, ::2, ::2] * t).flatten(), per sample
    want = torch.stack([(mask[0][0][:, ::2, ::2] * t).flatten() for t in torch.tensor([900.0, 30.0])])
    assert got.shape == want.shape == (2, 3 * 2 * 3) and torch.equal(got, want)


@pytest.mark.parametrize("spec", SPECS)
def test_the_exported_pipeline_reproduces_the_student(spec, tmp_path):
    """4 steps (crossing the boundary on the two experts): the stock pipeline written by export, run as its
    folder says, gives the frames t2vturbo samples the student with."""
    from diffusers import WanPipeline

    from t2vturbo.export import export_student
    from t2vturbo.formats import load_any_student

    teacher = load_teacher(spec)
    _random_student(teacher, scale=0.02)
    student = save_student(teacher, tmp_path / "student", {"base_model": spec, "lora": {"rank": 4, "alpha": 8},
                                                           "video": {**SHAPES[spec], "fps": 16}})
    out = export_student(student, format="diffusers", out_dir=tmp_path / "exp", guidance=3.0)
    pipe = WanPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "FlowMatchLCMScheduler"
    assert (pipe.transformer_2 is not None) == (spec == "tiny-wan22")
    assert pipe.config.boundary_ratio == (0.875 if spec == "tiny-wan22" else None)
    assert pipe.config.expand_timesteps == (spec == "tiny-wan22-5b")
    torch.manual_seed(7)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(7),
                  **_pipe_kwargs(spec)).frames.float()
    again = load_teacher(spec)
    load_any_student(student, again)
    ours = sample_video(again, [PROMPT], steps=4, guidance=3.0, mode="student", seed=7, **SHAPES[spec]).videos
    plain = sample_video(load_teacher(spec), [PROMPT], steps=4, mode="student", seed=7, **SHAPES[spec]).videos
    effect, gap = float((ours - plain).abs().mean()), float((ours - theirs).abs().mean())
    assert effect > 1e-3 and gap < min(1 / 255, effect / 20), (effect, gap)


@pytest.mark.parametrize("spec", SPECS)
def test_the_lora_export_loads_into_both_experts_and_gives_the_students_frames(spec, tmp_path):
    """One file per expert (the second loaded with ``load_into_transformer_2=True``); the 5B's one file."""
    from diffusers import FlowMatchLCMScheduler, WanPipeline

    from t2vturbo.export import export_student
    from t2vturbo.formats import load_any_student
    from t2vturbo.teachers.wan import WAN_LORA_FILE
    from t2vturbo.teachers.wan22 import WAN22_LORA_FILE_2, build_tiny_wan22, build_tiny_wan22_5b

    two = spec == "tiny-wan22"
    teacher = load_teacher(spec)
    _random_student(teacher)
    student = save_student(teacher, tmp_path / "student", {"base_model": spec, "lora": {"rank": 4, "alpha": 8}})
    out = export_student(student, format="lora", out_dir=tmp_path / "lora", guidance=3.0)
    assert (out / WAN_LORA_FILE).is_file() and (out / WAN22_LORA_FILE_2).is_file() == two
    info = json.loads((out / "t2vturbo.json").read_text())
    assert ("load_into_transformer_2=True" in info["how_to_run"]) == two
    save_wan22_teacher((build_tiny_wan22 if two else build_tiny_wan22_5b)(), tmp_path / "base")
    pipe = WanPipeline.from_pretrained(tmp_path / "base")
    pipe.load_lora_weights(str(out))
    if two:
        pipe.load_lora_weights(str(out), weight_name=WAN22_LORA_FILE_2, load_into_transformer_2=True)
    for tr in (pipe.transformer, pipe.transformer_2) if two else (pipe.transformer,):
        assert any("lora_A" in n for n, _ in tr.named_parameters())
    pipe.scheduler = FlowMatchLCMScheduler(shift=teacher.schedule.shift)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(2)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(2),
                  **_pipe_kwargs(spec)).frames.float()
    ours_parts = load_teacher(spec)
    load_any_student(student, ours_parts)
    ours = sample_video(ours_parts, [PROMPT], steps=4, guidance=3.0, mode="student", seed=2, **SHAPES[spec]).videos
    plain = sample_video(load_teacher(spec), [PROMPT], steps=4, mode="student", seed=2, **SHAPES[spec]).videos
    effect, gap = float((ours - plain).abs().mean()), float((ours - theirs).abs().mean())
    assert effect > 1e-3 and gap < min(1 / 255, effect / 20), (effect, gap)


# ---------------------------------------------------------------------------------------------- VAE, folders
def test_the_wan22_vae_normalises_per_channel_and_decodes_only_what_a_reward_needs():
    teacher = load_teacher("tiny-wan22-5b")
    pixels = torch.rand(1, 9, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean, std = teacher.encode_moments(pixels)
        raw = teacher.vae.encode(pixels.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean
        z_mean = torch.tensor(teacher.vae.config.latents_mean).view(1, 48, 1, 1, 1)
        z_std = torch.tensor(teacher.vae.config.latents_std).view(1, 48, 1, 1, 1)
        torch.testing.assert_close(mean, (raw - z_mean) / z_std, atol=1e-5, rtol=1e-5)
        assert mean.shape == (1, 48, 3, 4, 4) and teacher.pixel_frames(3) == 9
        full = teacher.decode_video(mean)
        some = teacher.decode_video(mean, frames=[0, 3])  # latent frames 0 and 1 only (the VAE is causal)
    assert full.shape == (1, 9, 3, 64, 64) and some.shape == (1, 2, 3, 64, 64)
    torch.testing.assert_close(some, full[:, [0, 3]], atol=1e-5, rtol=0)
    from t2vturbo.errors import ConfigError

    with pytest.raises(ConfigError, match="divisible by 32"):
        teacher.latent_shape(9, 48, 64)


@pytest.mark.parametrize("spec", SPECS)
def test_a_wan22_folder_loads_like_the_built_one(spec, tmp_path):
    from t2vturbo.teachers.loading import family_of
    from t2vturbo.teachers.wan import build_tiny_wan, save_wan_teacher

    built = load_teacher(spec)
    save_wan22_teacher(built, tmp_path / "w")
    assert family_of(str(tmp_path / "w")).name == "wan2.2"
    loaded = load_teacher(str(tmp_path / "w"))
    assert isinstance(loaded, Wan22Teacher) and loaded.schedule == built.schedule
    assert (loaded.boundary_ratio, loaded.expand_timesteps) == (built.boundary_ratio, built.expand_timesteps)
    assert loaded.stored_defaults == built.stored_defaults
    a = sample_video(built, [PROMPT], steps=2, mode="teacher", seed=0, **SHAPES[spec]).videos
    b = sample_video(loaded, [PROMPT], steps=2, mode="teacher", seed=0, **SHAPES[spec]).videos
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # a Wan2.1 folder written by the same diffusers (boundary_ratio null, expand_timesteps false) stays Wan2.1
    save_wan_teacher(build_tiny_wan(), tmp_path / "w21")
    assert family_of(str(tmp_path / "w21")).name == "wan"
    assert family_of("Wan-AI/Wan2.2-T2V-A14B-Diffusers").name == "wan2.2"
    assert family_of("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").name == "wan"


def test_missing_wan22_weights_name_the_hub_id(tmp_path):
    from t2vturbo.errors import MissingWeightError

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "boundary_ratio": 0.875, "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(MissingWeightError, match="hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers"):
        load_teacher(str(tmp_path / "w"))
    from t2vturbo.errors import ConfigError

    (tmp_path / "w" / "transformer").mkdir()  # an image-to-video folder (36 input channels) is refused, unread
    (tmp_path / "w" / "transformer" / "config.json").write_text(json.dumps({"in_channels": 36}))
    with pytest.raises(ConfigError, match="image-to-video"):
        load_teacher(str(tmp_path / "w"))


# ---------------------------------------------------------------------------------------------- runs
def test_cli_distill_resume_sample_export_tiny_wan22(tmp_path):
    """The CLI end to end; a run resumed from its step-2 checkpoint ends on the straight run's student."""
    from diffusers import WanPipeline
    from safetensors.torch import load_file

    recipe = REPO / "recipes" / "tiny-wan22.yaml"
    ov = ["train.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3", "train.batch_size=2",
          "sample.prompts=[]", "lora.rank=4"]
    run = tmp_path / "run"
    res = _cli("distill", recipe, *ov, "--output-dir", run, "--no-progress")
    assert res.exit_code == 0, res.output
    student = load_file(str(run / "student" / "student.safetensors"))
    assert {"transformer.condition_embedder.time_embedder.cond_proj.weight",
            "transformer_2.condition_embedder.time_embedder.cond_proj.weight"} <= set(student)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000003")
    shutil.rmtree(resumed / "student")
    res = _cli("distill", recipe, *ov, "--output-dir", resumed, "--resume", "--no-progress")
    assert res.exit_code == 0 and "resumed from" in res.output, res.output
    again = load_file(str(resumed / "student" / "student.safetensors"))
    assert again.keys() == student.keys()
    for k in student:
        torch.testing.assert_close(again[k], student[k], atol=1e-6, rtol=0)
    # `sample --student` with no options (PNG frames: lossless), and the exported stock pipeline run as its
    # folder says: the same frames
    res = _cli("sample", PROMPT, "--student", run / "student", "-o", tmp_path / "frames", "--format", "png")
    assert res.exit_code == 0, res.output
    res = _cli("export", run / "student", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    pipe = WanPipeline.from_pretrained(tmp_path / "exp")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == 0.875
    torch.manual_seed(0)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                  **_pipe_kwargs("tiny-wan22")).frames[0].float()
    from t2vturbo.video import read_video

    (written,) = [p for p in (tmp_path / "frames").iterdir() if p.is_dir()]
    mine = read_video(written).float()
    assert mine.shape == theirs.shape and float((mine - theirs).abs().mean()) < 1 / 255
    # the 5B distils from the CLI too, and exports to a pipeline that expands its timesteps
    res = _cli("distill", REPO / "recipes" / "tiny-wan22-5b.yaml", "train.max_steps=1", "train.batch_size=1",
               "sample.prompts=[]", "lora.rank=4", "--output-dir", tmp_path / "5b", "--no-progress")
    assert res.exit_code == 0, res.output
    res = _cli("export", tmp_path / "5b" / "student", "--out", tmp_path / "exp5b")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "exp5b" / "model_index.json").read_text())["expand_timesteps"] is True


def test_two_process_cpu_distill_tiny_wan22_with_torchrun(tmp_path):
    """batch 1 per rank: most steps leave one expert unused on a rank; DDP must still reduce every parameter."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "t2vturbo_cli", "distill", str(REPO / "recipes" / "tiny-wan22.yaml"), "train.max_steps=3",
           "train.batch_size=1", "train.num_threads=1", "sample.prompts=[]", "lora.rank=4", "model.device=cpu",
           "-o", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank-{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["student_sha256"] == r1["student_sha256"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_dry_runs_list_the_hub_files_and_both_experts(tmp_path):
    res = _cli("distill", REPO / "recipes" / "wan2.2-t2v-a14b.yaml", "--dry-run", "-o", tmp_path / "a")
    assert res.exit_code == 1, res.output  # the hub teacher, the reward files and the data are not here
    assert "not cached: hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers" in res.output
    assert "transformer_2/" in res.output and "both experts" in res.output
    assert "not cached: hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in res.output
    assert "smallest GPU that fits      80 GB" in res.output  # the memory plan, both experts counted
    res = _cli("distill", REPO / "recipes" / "wan2.2-ti2v-5b.yaml", "--dry-run", "--no-memory", "-o", tmp_path / "b")
    assert "not cached: hf download Wan-AI/Wan2.2-TI2V-5B-Diffusers" in res.output
    assert "48 channels" in res.output and "per latent token" in res.output
    for tiny in ("tiny-wan22", "tiny-wan22-5b"):
        res = _cli("distill", REPO / "recipes" / f"{tiny}.yaml", "--dry-run", "--no-memory", "-o", tmp_path / tiny)
        assert res.exit_code == 0 and "the run can start" in res.output, res.output


# ---------------------------------------------------------------------------------------------- full size
def _meta_teacher(two: bool, cfg: dict) -> tuple[Wan22Teacher, int]:
    from diffusers import WanTransformer3DModel

    from t2vturbo.schedules import FlowSchedule

    transformer = WanTransformer3DModel(**cfg)
    transformer_2 = WanTransformer3DModel(**cfg) if two else None
    teacher = Wan22Teacher(transformer=transformer, transformer_2=transformer_2, boundary_ratio=0.875 if two else None,
                           expand_timesteps=not two, vae=None, text_encoder=None, tokenizer=None,
                           schedule=FlowSchedule(12.0 if two else 5.0))
    return teacher, sum(p.numel() for p in teacher.network.parameters())


def test_full_size_wan22_a14b_and_ti2v_5b_on_the_meta_device():
    common = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    a14b = dict(common, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824, num_layers=40)
    ti2v = dict(common, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336, num_layers=30)
    with torch.device("meta"):
        teacher, base = _meta_teacher(True, a14b)
        targets = teacher.lora_targets()
        make_student(teacher, LoraSettings(rank=32, dropout=0.0))
    per_expert = base // 2
    assert 14.2e9 < per_expert < 14.4e9  # two 14 B experts ("A14B": 14 B active per step, 28.6 B in all)
    assert len(targets) == 800 and sum(n.startswith("transformer_2.") for n in targets) == 400
    trainable = {n: p.numel() for n, p in teacher.network.named_parameters() if p.requires_grad}
    # rank 32 on 40 x (8 attention linears 5120x5120 + FFN 5120x13824 and back) per expert + two 256x256 projections
    lora = 40 * (8 * 32 * (5120 + 5120) + 2 * 32 * (5120 + 13824))
    assert sum(trainable.values()) == 2 * lora + 2 * 256 * 256
    assert sum(v for n, v in trainable.items() if n.startswith("transformer_2.")) == lora + 256 * 256
    with torch.device("meta"):
        teacher, base5 = _meta_teacher(False, ti2v)
        targets5 = teacher.lora_targets()
        make_student(teacher, LoraSettings(rank=64, dropout=0.0))
    assert 4.9e9 < base5 < 5.1e9 and len(targets5) == 300
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):  # Wan-AI/Wan2.2-TI2V-5B-Diffusers' vae/config.json (its statistics left out)
        teacher.vae = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4],
                                       num_res_blocks=2, temperal_downsample=[False, True, True], in_channels=12,
                                       out_channels=12, patch_size=2, scale_factor_spatial=16,
                                       scale_factor_temporal=4, is_residual=True)
    vae = sum(p.numel() for p in teacher.vae.parameters())
    assert 0.70e9 < vae < 0.71e9
    assert teacher.latent_shape(121, 704, 1280) == (48, 31, 44, 80)  # the card's clip: 27,280 tokens per forward
    trainable5 = sum(p.numel() for p in teacher.network.parameters() if p.requires_grad)
    assert trainable5 == 30 * (8 * 64 * (3072 + 3072) + 2 * 64 * (3072 + 14336)) + 256 * 256
    print(f"Wan2.2-T2V-A14B: 2 x {per_expert / 1e9:.3f} B; LoRA r32 + guidance: {sum(trainable.values()) / 1e6:.1f} M "
          f"trainable | TI2V-5B: {base5 / 1e9:.3f} B, VAE {vae / 1e6:.0f} M; LoRA r64 + guidance: {trainable5 / 1e6:.1f} M "
          "trainable")


def test_the_memory_plan_counts_both_experts_and_the_5b():
    """``distill --dry-run``'s memory plan: the tiny Wan2.2s count what a real run holds; the full-size recipes
    count both experts (and no text encoder: the A14B recipe trains from prepared latents) and fit one 80 GB GPU
    as counted."""
    from test_memory_plan import _real_run_bytes

    from t2vturbo import memory_plan as M
    from t2vturbo.config import load_recipe

    for tiny in ("tiny-wan22.yaml", "tiny-wan22-5b.yaml"):
        ov = ["model.device=cpu", "lora.rank=8"]
        c = M.count(load_recipe(REPO / "recipes" / tiny, ov))
        assert (c.frozen, c.trainable, c.optimiser, c.teacher_copy) == _real_run_bytes(tiny, ov)
    c = M.count(load_recipe(REPO / "recipes" / "wan2.2-t2v-a14b.yaml", check=False))
    lora = 40 * (8 * 32 * (5120 + 5120) + 2 * 32 * (5120 + 13824))
    assert c.trainable_params == 2 * lora + 2 * 256 * 256 and 28.5e9 < c.frozen_params < 28.7e9 and c.text == 0
    assert M.per_rank(c, 1, "ddp")["total"] <= M.USABLE * 80e9 / M.GIB
    c = M.count(load_recipe(REPO / "recipes" / "wan2.2-ti2v-5b.yaml", check=False))
    assert 4.9e9 < c.frozen_params < 5.1e9 and 0.70e9 < c.vae / 2 < 0.71e9  # the bf16 Wan2.2 VAE
    assert M.per_rank(c, 1, "ddp")["total"] <= M.USABLE * 80e9 / M.GIB
