"""Teacher loading: embedded tiny model, diffusers folders, hub ids offline, and one-line errors."""


import pytest
import torch
from typer.testing import CliRunner

from t2vturbo.errors import MissingWeightError
from t2vturbo.teachers import call_unet, decode_latents, encode_pixels, encode_prompts, load_teacher
from t2vturbo.tiny import build_tiny_teacher


def test_diffusers_folder_round_trip(tmp_path):
    ref = build_tiny_teacher(seed=3)
    from t2vturbo.teachers.unet3d import save_unet3d_teacher

    parts = load_teacher(str(save_unet3d_teacher(ref, tmp_path / "model")))
    assert not any(p.requires_grad for p in parts.unet.parameters())
    torch.testing.assert_close(parts.alphas_cumprod, ref.alphas_cumprod)
    x, t = torch.randn(1, 4, 2, 8, 8), torch.tensor([10])
    h = encode_prompts(parts, ["a red circle moving left"])
    torch.testing.assert_close(h, encode_prompts(ref.to(), ["a red circle moving left"]).detach(), atol=1e-6, rtol=0)
    ref.unet.eval()
    with torch.no_grad():
        torch.testing.assert_close(call_unet(parts.unet, x, t, h), call_unet(ref.unet, x, t, h), atol=1e-5, rtol=0)


def test_vae_round_trip_shapes_and_range():
    parts = load_teacher("tiny")
    pix = torch.rand(2, 3, 3, 32, 32)
    with torch.no_grad():
        lat = encode_pixels(parts, pix)
        factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        assert lat.shape == (2, 4, 3, 32 // factor, 32 // factor)
        out = decode_latents(parts, lat, frames=[0, 2], chunk=1)
    assert out.shape == (2, 2, 3, 32, 32)


def test_hub_id_not_in_cache_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MissingWeightError) as err:
        load_teacher("ali-vilab/text-to-video-ms-1.7b")
    msg = str(err.value)
    assert "hf download ali-vilab/text-to-video-ms-1.7b" in msg and "\n" not in msg


def test_incomplete_folder_names_the_missing_part(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(MissingWeightError, match="has no vae/ folder"):
        load_teacher(str(tmp_path))


def test_cli_missing_model_is_one_line(tmp_path):
    from t2vturbo_cli.main import app

    res = CliRunner().invoke(app, ["sample", "x", "--model", str(tmp_path / "nope"), "--device", "cpu"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "not found" in res.output
