"""T2V-Turbo-v2's released student layout (``unet_mg.pt``): our loader and UNet reproduce the reference outputs
with and without the motion condition, and the reference scheduler's timesteps and motion rule
(``../shared/fixtures/vc2v2_small_student``; skips without ../shared)."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from t2vturbo import convert
from t2vturbo.errors import CheckpointError
from t2vturbo.motion import MotionGuidance, motion_schedule
from t2vturbo.safeio import load_weights
from t2vturbo.schedules import consistency_timesteps
from t2vturbo.teachers import call_unet
from t2vturbo.teachers.motion import MOTION_KEYS

ATOL = 5e-5


def _fixture(name):
    return shared_path("fixtures", "vc2v2_small_student", name)


@pytest.fixture(scope="module")
def v2_unet():
    state = load_weights(_fixture("unet_mg.pt"))  # torch.load(weights_only=True): a plain state dict
    assert all(k in state for k in MOTION_KEYS)
    return convert.build_vc2_v2_unet(state).eval()


@pytest.mark.parametrize("case", ["student_out", "student_out_no_motion", "student_out_motion_zero"])
def test_v2_student_reproduces_the_reference(v2_unet, case):
    inp = load_file(_fixture("inputs.safetensors"))
    expected = load_file(_fixture("expected.safetensors"))[case]
    motion = {"student_out": inp["m_emb"], "student_out_no_motion": None,
              "student_out_motion_zero": inp["m_emb_zero"]}[case]
    with torch.no_grad():
        out = call_unet(v2_unet, inp["x"], inp["timesteps"], inp["context"], timestep_cond=inp["w_emb"],
                        fps=inp["fps"], motion_cond=motion)
    assert (out - expected).abs().max().item() < ATOL
    assert not v2_unet.time_embedding._forward_pre_hooks  # the motion input leaves nothing behind


def test_motion_condition_matters_and_is_not_the_same_as_none(v2_unet):
    expected = load_file(_fixture("expected.safetensors"))
    assert (expected["student_out"] - expected["student_out_no_motion"]).abs().max() > 1e-2
    assert (expected["student_out_motion_zero"] - expected["student_out_no_motion"]).abs().max() > 1e-3


def test_v2_timesteps_and_motion_rule_match_the_reference_scheduler():
    exp = load_file(_fixture("expected.safetensors"))
    for steps, origin, key, on in ((4, 200, "sched_timesteps_200", "motion_on_200"),
                                   (4, 50, "sched_timesteps_50", "motion_on_50"),
                                   (8, 200, "sched_timesteps_200_8steps", "motion_on_200_8steps")):
        ts = consistency_timesteps(steps, origin_steps=origin)
        assert ts == exp[key].tolist()
        assert [int(m) for m in motion_schedule(ts, 0.3)] == exp[on].tolist()


def test_a_broken_motion_file_is_one_line(v2_unet):
    state = load_weights(_fixture("unet_mg.pt"))
    state.pop("combine_proj.weight")
    with pytest.raises(CheckpointError, match="combine_proj.weight is missing"):
        convert.build_vc2_v2_unet(state)
    state = load_weights(_fixture("unet_mg.pt"))
    state["motion_cond_proj.weight"] = state["motion_cond_proj.weight"][:, :128]
    with pytest.raises(CheckpointError, match="motion_cond_proj.weight has shape"):
        convert.build_vc2_v2_unet(state)
    with pytest.raises(CheckpointError, match="no motion projections"):
        x = torch.zeros(1, 4, 2, 16, 16)
        from t2vturbo.tiny import build_tiny_teacher

        parts = build_tiny_teacher()
        call_unet(parts.unet, x, torch.tensor([1]), torch.zeros(1, 16, 64), motion_cond=torch.zeros(1, 256))


def _converted_vc2(tmp_path):
    from test_teacher_contract import _vc2_folder

    return _vc2_folder(tmp_path)


def test_v2_student_samples_through_the_cli_with_motion_and_is_detected(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from t2vturbo.formats import detect_student_format

    folder = _converted_vc2(tmp_path)
    student = _fixture("unet_mg.pt")
    assert detect_student_format(student) == "v2"
    runner = CliRunner()
    outs = {}
    for name, extra in (("motion", []), ("no-motion", ["--motion-guidance", "0"]), ("strong", ["--motion-guidance", "0.5"])):
        res = runner.invoke(app, ["sample", "a dog running", "--model", folder, "--student", str(student),
                                  "--frames", "4", "--height", "32", "--width", "32", "--seed", "3",
                                  "-o", str(tmp_path / f"{name}.mp4"), *extra])
        assert res.exit_code == 0, res.output
        assert "student, 4 steps" in res.output
        from t2vturbo.video import read_video

        outs[name] = read_video(tmp_path / f"{name}.mp4")
    assert (outs["motion"] - outs["strong"]).abs().mean() > 1e-3  # the motion scale reaches the UNet


def test_v2_student_on_a_modelscope_model_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, ["sample", "a dog", "--model", "tiny", "--student", str(_fixture("unet_mg.pt")),
                                   "-o", str(tmp_path / "x.mp4")])
    assert res.exit_code == 2 and "VideoCrafter2" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "x.mp4").exists()


def test_sampler_gives_the_motion_embedding_only_on_the_first_steps(tmp_path, monkeypatch):
    from t2vturbo.formats import load_any_student
    from t2vturbo.sampling import sample_video
    from t2vturbo.teachers import load_teacher

    parts = load_teacher(_converted_vc2(tmp_path))
    load_any_student(_fixture("unet_mg.pt"), parts)
    seen = []
    real = parts.denoise

    def spy(x, t, text, **kw):
        m = kw.get("motion_cond")
        seen.append((int(t[0]), None if m is None else float(m[0, :128].abs().sum())))
        return real(x, t, text, **kw)

    monkeypatch.setattr(parts, "denoise", spy)
    sample_video(parts, ["a dog"], steps=4, frames=4, height=32, width=32, origin_steps=200,
                 motion=MotionGuidance(scale=0.05), decode=False)
    assert [t for t, _ in seen] == [999, 749, 499, 249]
    assert seen[0][1] > 0 and seen[1][1] > 0  # sin part of embed(0.05) is not zero: motion on at t >= 700
    assert seen[2][1] == 0 and seen[3][1] == 0  # embed(0): 128 zeros then 128 ones, not "no condition"


def test_v2_export_is_the_motion_free_student_in_stock_diffusers(tmp_path):
    from diffusers import UNet3DConditionModel

    from t2vturbo.consistency import guidance_embedding
    from t2vturbo.export import export_student
    from t2vturbo.formats import load_any_student
    from t2vturbo.teachers import load_teacher

    folder = _converted_vc2(tmp_path)
    out = export_student(_fixture("unet_mg.pt"), folder, format="diffusers", out_dir=tmp_path / "exp", guidance=7.5)
    import json

    assert "dropped" in json.loads((out / "t2vturbo.json").read_text())["motion_guidance"]
    stock = UNet3DConditionModel.from_pretrained(out / "unet").eval()
    parts = load_teacher(folder)
    load_any_student(_fixture("unet_mg.pt"), parts)
    inp = load_file(_fixture("inputs.safetensors"))
    x, t, ctx = inp["x"][:1], inp["timesteps"][:1], inp["context"][:1]
    w = guidance_embedding(torch.tensor([7.5]))
    with torch.no_grad():
        ours = call_unet(parts.unet, x, t, ctx, timestep_cond=w, fps=parts.default_fps)
        theirs = stock(x, t, encoder_hidden_states=ctx).sample
        with_motion = call_unet(parts.unet, x, t, ctx, timestep_cond=w, fps=parts.default_fps,
                                motion_cond=guidance_embedding(torch.tensor([0.05])))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert (with_motion - ours).abs().max() > 1e-3  # what the export cannot express
