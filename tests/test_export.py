"""``export``: a stock diffusers pipeline folder (LoRA merged, guidance folded) and the peft adapter alone."""

from __future__ import annotations

import json

import pytest
import torch

from t2vturbo.consistency import guidance_embedding
from t2vturbo.errors import ConfigError
from t2vturbo.export import export_student, pipeline_timesteps
from t2vturbo.formats import detect_student_format, load_any_student
from t2vturbo.student import LoraSettings, make_student, save_student
from t2vturbo.teachers import load_teacher

PROMPT = "a red circle moving left"
GUIDANCE = 6.0


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny student with non-zero LoRA ups and guidance projection, saved as `t2vturbo distill` does."""
    parts = load_teacher("tiny")
    make_student(parts, LoraSettings(rank=4, alpha=8, dropout=0.0))  # scale 2: exports must carry it
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in parts.unet.named_parameters():
            if "lora_B" in name or "cond_proj" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    folder = save_student(parts, tmp_path_factory.mktemp("student") / "student", {"base_model": "tiny"})
    return folder, parts


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pipe"
    export_student(student[0], format="diffusers", out_dir=out, guidance=GUIDANCE)
    return out


def run_unet(unet, w=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, 2, 8, 8, generator=gen)
    t = torch.tensor([601])
    ctx = torch.randn(1, 16, unet.config.cross_attention_dim, generator=gen)
    cond = guidance_embedding(torch.tensor([w])) if w is not None else None
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx, timestep_cond=cond).sample


def test_diffusers_folder_is_a_plain_pipeline_with_guidance_folded(student, exported):
    from diffusers import LCMScheduler, UNet3DConditionModel

    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert (exported / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    unet_cfg = json.loads((exported / "unet" / "config.json").read_text())
    assert unet_cfg.get("time_cond_proj_dim") is None
    sched = LCMScheduler.from_pretrained(exported / "scheduler")
    assert torch.allclose(sched.alphas_cumprod, student[1].alphas_cumprod)
    assert sched.config.original_inference_steps == 50
    assert pipeline_timesteps(exported, 4) == [999, 759, 499, 259]
    assert json.loads((exported / "t2vturbo.json").read_text())["guidance_folded"] == GUIDANCE

    merged = UNet3DConditionModel.from_pretrained(exported / "unet").eval()
    assert not any("lora" in k or "cond_proj" in k for k in merged.state_dict())
    out_student = run_unet(student[1].unet, GUIDANCE)
    out_merged = run_unet(merged)
    assert (out_merged - out_student).abs().max() < 1e-5
    assert (run_unet(student[1].unet, 2.0) - out_merged).abs().max() > 1e-3  # the folded w matters


def _stock_pipeline(folder, steps, seed, frames=4, size=32):
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=1.0, num_frames=frames, height=size, width=size,
               generator=torch.Generator().manual_seed(seed), output_type="pt")
    return out.frames  # (B, F, 3, H, W) in [0, 1]


def _our_sampler(folder, steps, seed, frames=4, size=32):
    from t2vturbo.sampling import sample_video

    parts = load_teacher(str(folder))
    res = sample_video(parts, [PROMPT], steps=steps, guidance=1.0, frames=frames, height=size, width=size,
                       seed=seed, timesteps=pipeline_timesteps(folder, steps))
    assert res.unet_calls == steps
    return res.videos


def test_round_trip_one_step_matches_stock_diffusers(exported):
    ours = _our_sampler(exported, 1, seed=11)
    stock = _stock_pipeline(exported, 1, seed=11)
    assert ours.shape == stock.shape == (1, 4, 3, 32, 32)
    assert (ours - stock).abs().max() < 1e-4


def test_round_trip_four_steps_matches_stock_diffusers(exported):
    ours = _our_sampler(exported, 4, seed=5)
    stock = _stock_pipeline(exported, 4, seed=5)
    assert (ours - stock).abs().max() < 1e-4


def test_lora_export_is_peft_layout_and_reloads(student, tmp_path):
    from safetensors.torch import load_file

    out = export_student(student[0], format="lora", out_dir=tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4
    assert config["modules_to_save"] == ["time_embedding.cond_proj"]
    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    assert "base_model.model.conv_in.lora_A.weight" in keys
    assert "base_model.model.time_embedding.cond_proj.weight" in keys
    assert detect_student_format(out) == "peft"

    reference = run_unet(student[1].unet, GUIDANCE)
    parts = load_teacher("tiny")
    load_any_student(out, parts)
    assert (run_unet(parts.unet, GUIDANCE) - reference).abs().max() < 1e-5

    # plain peft, no t2vturbo: a base UNet with time_cond_proj_dim=256 + PeftModel.from_pretrained
    from diffusers import UNet3DConditionModel
    from peft import PeftModel

    base = load_teacher("tiny").unet
    unet = UNet3DConditionModel.from_config(base.config, time_cond_proj_dim=256)
    unet.load_state_dict(base.state_dict(), strict=False)
    peft_unet = PeftModel.from_pretrained(unet, out).eval()
    assert (run_unet(peft_unet.base_model.model, GUIDANCE) - reference).abs().max() < 1e-5


def test_fold_fps_is_exact():
    """VideoCrafter2's fps embedding at a fixed fps becomes a time_embedding.linear_2 bias."""
    from diffusers import UNet3DConditionModel

    from t2vturbo.teachers import FPSEmbedding, attach_fps_embedding, call_unet
    from t2vturbo.teachers.unet3d_files import fold_fps
    from t2vturbo.tiny.teacher import UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**UNET_CONFIG).eval()
    c0 = unet.config.block_out_channels[0]
    attach_fps_embedding(unet, FPSEmbedding(c0, 4 * c0))
    x, ctx = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        at_12 = call_unet(unet, x, torch.tensor([300]), ctx, fps=12)
        at_8 = call_unet(unet, x, torch.tensor([300]), ctx, fps=8)
        fold_fps(unet, 12)
        folded = call_unet(unet, x, torch.tensor([300]), ctx)
    assert getattr(unet, "fps_embedding", None) is None
    assert (folded - at_12).abs().max() < 1e-5 < (at_8 - at_12).abs().max()


def test_failed_export_leaves_no_folder(student, tmp_path, monkeypatch):
    import t2vturbo.teachers.unet3d_files as unet3d_files

    def broken(parts, folder, *args, **kwargs):
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(unet3d_files, "write_diffusers_pipeline", broken)
    with pytest.raises(OSError, match="disk full"):
        export_student(student[0], format="diffusers", out_dir=tmp_path / "pipe")
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_out_and_unknown_format(student, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_student(student[0], format="lora", out_dir=tmp_path / "taken")
    assert (tmp_path / "taken" / "file").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown export format"):
        export_student(student[0], format="onnx", out_dir=tmp_path / "x")


def test_cli_export_official_list(tmp_path):
    """An official unet_lora.pt records no base model: --model is required, then the adapter is written."""
    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    from t2vturbo.teachers.unet3d_files import ms_official_module_names

    unet = load_teacher("tiny").unet
    gen = torch.Generator().manual_seed(0)
    tensors = []
    for name in ms_official_module_names(unet):
        if name == "time_embedding.cond_proj":
            shape = (unet.time_embedding.linear_1.in_features, 256)
        else:
            shape = tuple(unet.get_submodule(name).weight.shape)
        r = min(2, shape[0], shape[1])
        tensors += [torch.randn((shape[0], r, *[1] * (len(shape) - 2)), generator=gen) * 0.01,
                    torch.randn((r, *shape[1:]), generator=gen) * 0.01]
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors, path)

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(path), "--format", "lora", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--model" in res.output
    assert not (tmp_path / "a").exists()
    res = runner.invoke(app, ["export", str(path), "--format", "lora", "--out", str(tmp_path / "a"), "--model", "tiny"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert detect_student_format(tmp_path / "a") == "peft"
