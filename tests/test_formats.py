"""The official T2V-Turbo ``unet_lora.pt`` list format (docs/formats.md §3): validation, conversion to peft, reference vector."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import shared_path
from helpers import unet_teacher
from torch import nn

from t2vturbo.errors import CheckpointError
from t2vturbo.formats import detect_student_format, load_any_student
from t2vturbo.safeio import load_weights
from t2vturbo.student import add_guidance_projection, merge_lora
from t2vturbo.teachers.unet3d_files import (
    GUIDANCE_MODULE,
    GUIDANCE_PROJECTION_SEED,
    load_official_lora,
    ms_official_module_names,
)
from t2vturbo.tiny.teacher import UNET_CONFIG


def _module_weight_shape(unet, name):
    if name == GUIDANCE_MODULE and getattr(unet.time_embedding, "cond_proj", None) is None:
        return (unet.time_embedding.linear_1.in_features, 256)
    return tuple(unet.get_submodule(name).weight.shape)


def official_list(unet, rank=4, seed=0, names=None):
    """An official-layout list [up0, down0, ...] for ``unet`` with non-zero ups (rank min(r, in, out))."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for name in names if names is not None else ms_official_module_names(unet):
        shape = _module_weight_shape(unet, name)
        r = min(rank, shape[0], shape[1])
        fan_in = torch.Size(shape[1:]).numel()
        down = torch.randn((r, *shape[1:]), generator=gen) / fan_in**0.5
        up = torch.randn((shape[0], r, *([1] * (len(shape) - 2))), generator=gen) * 0.1
        tensors += [up, down]
    return tensors


@pytest.fixture(scope="module")
def tiny_parts():
    """The tiny teacher's UNet (architecture of build_tiny_teacher; VAE and text encoder are not needed here)."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return unet_teacher(UNet3DConditionModel(**UNET_CONFIG).eval())


def fresh_parts(tiny_parts):
    """A copy of the tiny teacher parts with an untouched UNet."""
    return unet_teacher(copy.deepcopy(tiny_parts.unet))


def unet_inputs(unet, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, unet.config.in_channels, 2, 8, 8, generator=gen)
    ctx = torch.randn(1, 5, unet.config.cross_attention_dim, generator=gen)
    return x, torch.tensor([500]), ctx


def test_official_list_merges_to_w_plus_up_down(tiny_parts, tmp_path):
    parts = fresh_parts(tiny_parts)
    base = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    tensors = official_list(parts.unet)
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors, path)
    assert detect_student_format(path) == "official"

    load_any_student(path, parts)
    unet = parts.unet
    names = ms_official_module_names(tiny_parts.unet)
    assert unet.time_embedding.cond_proj is not None

    x, t, ctx = unet_inputs(unet)
    from t2vturbo.consistency import guidance_embedding

    w_emb = guidance_embedding(torch.tensor([7.5]))
    with torch.no_grad():
        out_adapter = unet(x, t, encoder_hidden_states=ctx, timestep_cond=w_emb).sample
    merge_lora(unet)
    assert not any("lora_" in k for k in unet.state_dict())
    with torch.no_grad():
        out_merged = unet(x, t, encoder_hidden_states=ctx, timestep_cond=w_emb).sample
    assert torch.allclose(out_adapter, out_merged, atol=1e-5)

    # the re-created guidance projection: nn.Linear default init from the documented seed
    c0 = unet.time_embedding.linear_1.in_features
    expected_proj = add_guidance_projection(_stub_teacher(c0), 256, init="kaiming", seed=GUIDANCE_PROJECTION_SEED).weight
    merged = unet.state_dict()
    for i, name in enumerate(names):
        up, down = tensors[2 * i], tensors[2 * i + 1]
        w0 = expected_proj if name == GUIDANCE_MODULE else base[name + ".weight"]
        expected = w0 + (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        assert torch.allclose(merged[name + ".weight"], expected, atol=1e-6), name
        assert (up.abs() > 0).any()
    assert "time_embedding.cond_proj.weight" in merged


def _stub_teacher(channels):
    """Just enough of a teacher for add_guidance_projection: its guidance embedder has a linear_1 with
    ``channels`` inputs."""
    embedder = nn.Module()
    embedder.linear_1 = nn.Linear(channels, 4)
    return SimpleNamespace(guidance_embedder=lambda: embedder, guidance_embedders=lambda: [embedder])


@pytest.mark.parametrize("cut, pair", [(-2, r"pair {last} \(conv_out\) is missing"),
                                       (-1, r"pair {last} \(conv_out\) is incomplete")])
def test_short_list_names_first_missing_pair(tiny_parts, tmp_path, cut, pair):
    tensors = official_list(tiny_parts.unet)
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors[:cut], path)
    last = len(tensors) // 2 - 1
    with pytest.raises(CheckpointError, match=f"has {len(tensors) + cut} tensors .*" + pair.format(last=last)):
        load_official_lora(path, fresh_parts(tiny_parts))


def test_long_list_refused(tiny_parts, tmp_path):
    tensors = official_list(tiny_parts.unet)
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors + tensors[:2], path)
    with pytest.raises(CheckpointError, match=r"extra tensors after pair \d+ \(conv_out\)"):
        load_official_lora(path, fresh_parts(tiny_parts))


def test_mismatched_shape_names_first_bad_pair(tiny_parts, tmp_path):
    parts = fresh_parts(tiny_parts)
    unet = parts.unet
    names = ms_official_module_names(unet)
    tensors = official_list(unet)
    bad = 7
    tensors[2 * bad + 1] = tensors[2 * bad + 1][:, :-1]  # down with one input channel too few
    tensors[2 * (bad + 3)] = tensors[2 * (bad + 3)][:-1]  # a later bad pair is not the one reported
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors, path)
    with pytest.raises(CheckpointError, match=rf"pair {bad} \({names[bad]}, "):
        load_official_lora(path, parts)
    assert not any("lora_A" in n for n, _ in unet.named_modules())  # refused before touching the UNet


def test_not_a_list_refused(tiny_parts, tmp_path):
    path = tmp_path / "unet_lora.pt"
    torch.save({"conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="list of tensors"):
        detect_student_format(path)
    with pytest.raises(CheckpointError, match="list of tensors"):
        load_official_lora(path, fresh_parts(tiny_parts))


def test_vc2_unet_gets_the_vc2_order_and_fps_pairs_merged(tiny_parts, tmp_path):
    """An fps-conditioned UNet defaults to t2vturbo.convert's VC2 release order; fps_embedding pairs merge into weights."""
    from t2vturbo.convert import layout_of, vc2_lora_module_names
    from t2vturbo.teachers import FPSEmbedding, attach_fps_embedding, call_unet

    parts = fresh_parts(tiny_parts)
    unet = parts.unet
    c0 = unet.config.block_out_channels[0]
    torch.manual_seed(1)
    attach_fps_embedding(unet, FPSEmbedding(c0, 4 * c0))
    parts.default_fps = int(unet.fps_embedding.default_fps)  # fps-conditioned, as loading such a folder says
    names = vc2_lora_module_names(layout_of(unet))
    assert names[:5] == ["time_embedding.linear_1", "time_embedding.linear_2", "fps_embedding.linear_1",
                         "fps_embedding.linear_2", GUIDANCE_MODULE]
    base_fps = unet.fps_embedding.linear_2.weight.clone()
    tensors = official_list(unet, names=names)
    torch.save(tensors, tmp_path / "unet_lora.pt")
    load_any_student(tmp_path / "unet_lora.pt", parts)
    i = names.index("fps_embedding.linear_2")
    up, down = tensors[2 * i], tensors[2 * i + 1]
    assert torch.allclose(unet.fps_embedding.linear_2.weight, base_fps + up @ down, atol=1e-6)
    assert unet._t2vturbo_official["merged_into_weights"] == [
        "fps_embedding.linear_1", "fps_embedding.linear_2", GUIDANCE_MODULE]
    j = names.index("conv_in")
    assert torch.equal(unet.conv_in.lora_A["default"].weight, tensors[2 * j + 1])
    x, t, ctx = unet_inputs(unet)
    with torch.no_grad():
        out = call_unet(unet, x, t, ctx, fps=8)
    assert torch.isfinite(out).all()


def test_reproduces_reference_fixture():
    """The original code's inject/save/load/collapse path: outputs and merged weights to float32 precision."""
    from diffusers import UNet3DConditionModel

    folder = shared_path("fixtures", "ms_official_lora_small")
    config = json.loads((folder / "config.json").read_text())
    unet = UNet3DConditionModel.from_config(config)
    unet.load_state_dict({k: v.float() for k, v in load_weights(folder / "base_unet.safetensors").items()})
    unet.eval()
    order = [e["module"] for e in json.loads((folder / "lora_order.json").read_text())]
    assert ms_official_module_names(unet) == order

    load_official_lora(folder / "unet_lora.pt", unet_teacher(unet))
    inputs = load_weights(folder / "inputs.safetensors")
    expected = load_weights(folder / "expected.safetensors")

    def run():
        with torch.no_grad():
            return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                        timestep_cond=inputs["timestep_cond"]).sample

    out_adapter = run()
    assert (out_adapter - expected["unmerged_lora_out"]).abs().max() < 5e-5
    assert (out_adapter - expected["merged_out"]).abs().max() < 5e-5
    merge_lora(unet)
    assert (run() - expected["merged_out"]).abs().max() < 5e-5
    weights = unet.state_dict()
    for key, value in expected.items():
        if key.startswith("merged."):
            assert (weights[key[len("merged."):]] - value).abs().max() < 1e-6, key


def test_guidance_embedding_matches_fixture():
    from t2vturbo.consistency import guidance_embedding

    inputs = load_weights(shared_path("fixtures", "ms_official_lora_small", "inputs.safetensors"))
    # sin/cos of w * 1000 (thousands of radians) differ by up to ~1e-3 between float32 CPU kernels (see the
    # vc2_small_student fixture README); measured 4e-4 on an AVX-512 machine
    assert torch.allclose(guidance_embedding(inputs["w"]), inputs["timestep_cond"], atol=1e-3)


@pytest.mark.parametrize("with_projection", [False, True])
def test_ms_order_matches_release_at_full_size(with_projection):
    """ModelScope 1.7b on the meta device: our default order and shapes equal the release's 575 pairs."""
    from diffusers import UNet3DConditionModel

    release = json.loads(shared_path("formats", "ms_official_lora_order.json").read_text())
    with torch.device("meta"):
        unet = UNet3DConditionModel(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=64,
                                    cross_attention_dim=1024, sample_size=32,
                                    time_cond_proj_dim=256 if with_projection else None)
    names = ms_official_module_names(unet)
    assert names == [e["module"] for e in release]
    assert len(names) == 575
    for entry in release:
        assert list(_module_weight_shape(unet, entry["module"])) == entry["weight"], entry["module"]
