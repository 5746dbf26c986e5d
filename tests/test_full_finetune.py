"""``train.full_finetune`` (issue 29): the student is the whole network, the teacher a frozen copy of the original.
Two steps move the base weights while the teacher's passes stay the original teacher's; the student is saved whole,
samples with ``t2vturbo sample --student``, exports to a stock pipeline that reproduces it (``--format lora`` is
refused), resumes exactly, and FSDP over two processes trains the DDP run's student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2vturbo.config import load_recipe
from t2vturbo.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"
PROMPT = "a red circle moving left"
FULL = {"train.full_finetune": "true", "train.num_threads": 1, "sample.prompts": "[]"}


def _cli(*args):
    from t2vturbo_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"), n=4, frames=12)


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """A full fine-tune of the tiny teacher, two steps in this process, its student saved."""
    from t2vturbo.distill import Distiller

    out = tmp_path_factory.mktemp("run") / "run"
    d = Distiller(load_recipe(TINY, small_distill_overrides(clips, steps=2, **FULL)), out, progress=False,
                  log=lambda m: None)
    d.setup()
    d.train()
    return d, d.save_final()


def _step_inputs(d, seed=0):
    from t2vturbo.consistency import guidance_embedding

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = d.teacher.encode_video(torch.rand(2, 4, 3, 32, 32, generator=gen))
        cond = d.teacher.encode_text(["a red ball", "a blue ball"])
    step = d.stepper
    index = torch.tensor([30, 7])
    t_start, t_end = step.schedule.solver_pair(index, d.recipe.distill.skip, step.solver_t)
    x_t = step.schedule.add_noise(latents, torch.randn(latents.shape, generator=gen), t_start)
    w = torch.tensor([4.0, 7.0])
    return x_t, t_start, t_end, cond, step.uncond.expand(2, -1, -1), w, guidance_embedding(w, 256)


def test_two_steps_train_the_whole_network_and_the_teacher_stays_the_original(trained):
    d, _ = trained
    fresh = load_teacher("tiny")
    base = dict(fresh.network.named_parameters())
    params = dict(d.network.named_parameters())
    assert set(base) < set(params) and "time_embedding.cond_proj.weight" in params
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params.values())
    trained_ids = {id(p) for g in d.optimizer.param_groups for p in g["params"]}
    assert trained_ids == {id(p) for p in params.values()}
    changed = [n for n in base if not torch.equal(params[n].detach(), base[n].detach())]
    assert len(changed) > 0.9 * len(base), f"{len(changed)} of {len(base)} base weights moved"
    # the frozen copy is the original network, untouched
    assert not any(p.requires_grad for p in d.frozen.parameters()) and not d.frozen.training
    for k, v in fresh.network.state_dict().items():
        torch.testing.assert_close(d.frozen.state_dict()[k], v, atol=0, rtol=0)

    # the step's teacher pass runs the frozen copy and gives what the original teacher gives
    x_t, t_start, t_end, cond, uncond, w, w_emb = _step_inputs(d)
    calls = []
    hook = d.frozen.register_forward_hook(lambda *a: calls.append(1))
    try:
        ours, _ = d.stepper.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None)
    finally:
        hook.remove()
    assert calls == [1]
    saved, d.stepper.frozen = d.stepper.frozen, fresh.network.eval()
    try:
        original, _ = d.stepper.teacher_and_target(x_t, t_start, t_end, cond, uncond, w, w_emb, None)
    finally:
        d.stepper.frozen = saved
    torch.testing.assert_close(ours, original, atol=0, rtol=0)
    # ... and not what the trained network would give
    with torch.no_grad():
        x0_student, _ = d.teacher.denoise(x_t, t_start, cond)
        x0_teacher, _ = fresh.denoise(x_t, t_start, cond)
    assert float((x0_student - x0_teacher).abs().max()) > 1e-4


def test_the_student_file_is_the_whole_network_and_loads_onto_the_base(trained):
    from t2vturbo.formats import load_any_student

    d, path = trained
    meta = json.loads((path / "student.json").read_text())
    assert meta["full_finetune"] is True and meta["lora"] is None and meta["base_model"] == "tiny"
    state = load_file(str(path / "student.safetensors"))
    assert set(state) == set(d.network.state_dict())
    assert not any("lora_" in k for k in state)
    teacher = load_teacher("tiny")
    load_any_student(path, teacher)
    x_t, t_start, _, cond, _, _, w_emb = _step_inputs(d, seed=1)
    d.network.eval()
    try:
        with torch.no_grad():
            want, _ = d.teacher.denoise(x_t, t_start, cond, guidance_cond=w_emb)
            got, _ = teacher.denoise(x_t, t_start, cond, guidance_cond=w_emb)
    finally:
        d.network.train()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_sample_student_and_the_diffusers_export_agree_at_one_step(trained, tmp_path):
    from t2vturbo.video import read_video

    _, path = trained
    res = _cli("sample", PROMPT, "--student", path, "--steps", 1, "-o", tmp_path / "student.mp4")
    assert res.exit_code == 0, res.output
    res = _cli("export", path, "--format", "diffusers", "--out", tmp_path / "exported")
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    res = _cli("sample", PROMPT, "--model", tmp_path / "exported", "--steps", 1, "-o", tmp_path / "exported.mp4")
    assert res.exit_code == 0, res.output
    mine, theirs = (read_video(tmp_path / f"{n}.mp4").float() for n in ("student", "exported"))
    assert mine.shape == theirs.shape and mine.shape[0] == 4
    assert float((mine - theirs).abs().mean()) < 1 / 255


def test_lora_export_is_refused_in_one_line(trained, tmp_path):
    _, path = trained
    res = _cli("export", path, "--format", "lora", "--out", tmp_path / "lora")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "fully fine-tuned" in res.output and "use --format diffusers" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "lora").exists()


def test_wan_full_student_exports_to_a_stock_pipeline(tmp_path):
    """A fully fine-tuned Wan student (no training needed: every weight moved at random) exports to WanPipeline
    with nothing to merge and samples as `sample --student` does."""
    from t2vturbo.generate import generate_videos
    from t2vturbo.student import make_full_student, save_student
    from t2vturbo.video import read_video

    teacher = load_teacher("tiny-wan")
    make_full_student(teacher)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in teacher.network.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    shape = {"frames": 5, "height": 32, "width": 32}
    student = save_student(teacher, tmp_path / "student", {"base_model": "tiny-wan", "default_guidance": 6.0,
                                                           "default_steps": 1, "video": {**shape, "fps": 8}})
    assert json.loads((student / "student.json").read_text())["full_finetune"] is True
    ours = generate_videos([PROMPT], [tmp_path / "ours.mp4"], student=str(student))[0]
    res = _cli("export", student, "--out", tmp_path / "exported")
    assert res.exit_code == 0, res.output
    theirs = generate_videos([PROMPT], [tmp_path / "theirs.mp4"], model=str(tmp_path / "exported"))[0]
    assert ours.steps == theirs.steps == 1 and theirs.mode == "student"
    a, b = read_video(ours.path).float(), read_video(theirs.path).float()
    assert a.shape == b.shape and float((a - b).abs().mean()) < 1 / 255


def test_resume_equals_the_straight_run(clips, tmp_path):
    from t2vturbo.distill import run_distill
    from t2vturbo.train_state import list_checkpoints, load_checkpoint

    quiet = {"progress": False, "log": lambda m: None}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_distill(load_recipe(TINY, small_distill_overrides(clips, steps=4, **FULL)), straight, **quiet)
    run_distill(load_recipe(TINY, small_distill_overrides(clips, steps=2, **FULL)), resumed, **quiet)
    run_distill(load_recipe(TINY, small_distill_overrides(clips, steps=4, **FULL)), resumed, resume=True,
                explicit=("train.max_steps",), **quiet)
    a, b = (load_file(str(p / "student" / "student.safetensors")) for p in (straight, resumed))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    # the checkpoint holds the whole trained network (every parameter), gathered
    state = load_checkpoint(list_checkpoints(straight / "checkpoints")[-1][1])
    params = {n for n, _ in load_teacher("tiny").network.named_parameters()}
    assert params < set(state["student"]) and "time_embedding.cond_proj.weight" in state["student"]
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_motion_prior_runs_on_the_frozen_copy(clips, tmp_path):
    """The v2 recipe's motion guidance with a full fine-tune: the inversion and the prior run the frozen copy, the
    student learns its motion projections too, and the saved student loads as a motion-guided one."""
    from t2vturbo.distill import Distiller
    from t2vturbo.formats import load_any_student

    ov = small_distill_overrides(clips, steps=1, **{**FULL, "distill.motion.scale": 0.05,
                                                    "distill.motion.percentage": 1.0, "rewards": "[]",
                                                    "distill.num_ddim_timesteps": 10, "distill.skip": 100})
    d = Distiller(load_recipe(TINY, ov), tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    motion = d.network.motion_condition
    assert all(p.requires_grad for p in motion.parameters())
    calls = []
    hook = d.frozen.register_forward_hook(lambda *a: calls.append(1))
    net_calls = []
    net_hook = d.network.register_forward_hook(lambda *a: net_calls.append(1))
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    try:
        d.train()
    finally:
        hook.remove()
        net_hook.remove()
    assert len(calls) >= 3  # the inversion (>= 1), the prior's two forwards, the ODE step
    assert len(net_calls) == 2  # the target and the student only
    assert any(not torch.equal(before[k], v) for k, v in motion.state_dict().items())
    path = d.save_final()
    fresh = load_teacher("tiny")
    load_any_student(path, fresh)
    assert fresh.supports_motion
    torch.testing.assert_close(fresh.unet.motion_condition.combine_proj.weight,
                               motion.combine_proj.weight.detach(), atol=0, rtol=0)


def test_fsdp_full_finetune_equals_ddp_and_resumes_exactly(clips, tmp_path):
    import shutil

    from test_fsdp import rel_l2, student, torchrun

    args = [str(TINY), *small_distill_overrides(clips, steps=3, **FULL)]
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    torchrun(args, ddp, port=29571)
    res = torchrun([*args, "train.parallel=fsdp"], fsdp, port=29571)
    log = res.stderr + res.stdout
    assert "FSDP: the network sharded in 8 units over 2 process(es)" in log
    assert "FSDP: the frozen teacher copy sharded in 8 units" in log
    a, b = student(ddp), student(fsdp)
    assert set(a) == set(load_teacher("tiny").network.state_dict()) | {"time_embedding.cond_proj.weight"}
    assert rel_l2(a, b) <= 1e-3
    fresh = load_teacher("tiny").network.state_dict()
    assert rel_l2({k: fresh[k] for k in fresh}, {k: b[k] for k in fresh}) > 1e-6  # it trained
    for out in (ddp, fsdp):
        assert json.loads((out / "student" / "student.json").read_text())["full_finetune"] is True
    r0, r1 = (json.loads((fsdp / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["student_sha256"] == r1["student_sha256"]
    # the same run stopped after its step-2 checkpoint and resumed under FSDP: the straight run's student
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000003")
    shutil.rmtree(resumed / "student")
    res = torchrun([*args, "train.parallel=fsdp"], resumed, port=29571, resume=True)
    assert "resumed from" in res.stderr + res.stdout and "at step 2" in res.stderr + res.stdout
    c = student(resumed)
    for k in b:
        torch.testing.assert_close(c[k], b[k], atol=1e-6, rtol=0)
