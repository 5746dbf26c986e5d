import pytest
import torch

from t2vturbo.consistency import guidance_embedding
from t2vturbo.student import (
    LoraSettings,
    load_student_weights,
    make_student,
    read_student,
    save_student,
    teacher_mode,
    trainable_parameters,
)
from t2vturbo.teachers import call_unet
from t2vturbo.tiny import build_tiny_teacher


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 2, 8, 8, generator=g), torch.tensor([500, 20]), torch.randn(2, 16, 64, generator=g),
            guidance_embedding(torch.tensor([5.0, 9.0])))


def test_fresh_student_equals_teacher_and_shares_weights(inputs):
    x, t, h, w = inputs
    parts = build_tiny_teacher()
    # frozen, as every loaded teacher is (a frozen conv can take another CPU kernel: ~1e-7 apart from a trainable one)
    unet = parts.unet.eval().requires_grad_(False)
    n_before = sum(p.numel() for p in unet.parameters())
    with torch.no_grad():
        ref = call_unet(unet, x, t, h)
    base_ptr = unet.conv_in.weight.data_ptr()
    make_student(parts, LoraSettings(rank=4, dropout=0.0))
    # the same module: no second copy of the base weights
    assert unet.conv_in.base_layer.weight.data_ptr() == base_ptr
    lora_params = sum(p.numel() for p in trainable_parameters(unet))
    assert sum(p.numel() for p in unet.parameters()) == n_before + lora_params
    with torch.no_grad():
        student = call_unet(unet, x, t, h, timestep_cond=w)  # B = 0 and zero guidance projection
        with teacher_mode(unet):
            teacher = call_unet(unet, x, t, h)
    torch.testing.assert_close(student, ref, atol=0, rtol=0)
    torch.testing.assert_close(teacher, ref, atol=0, rtol=0)


def test_adapter_and_guidance_change_output_only_in_student_mode(inputs):
    x, t, h, w = inputs
    parts = build_tiny_teacher()
    unet = parts.unet.eval().requires_grad_(False)
    with torch.no_grad():
        ref = call_unet(unet, x, t, h)
    make_student(parts, LoraSettings(rank=4, dropout=0.0))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name or name == parts.guidance_key:
                p.normal_(0, 0.02)
        student = call_unet(unet, x, t, h, timestep_cond=w)
        other_w = call_unet(unet, x, t, h, timestep_cond=guidance_embedding(torch.tensor([2.0, 2.0])))
        with teacher_mode(unet):
            teacher = call_unet(unet, x, t, h)
    torch.testing.assert_close(teacher, ref, atol=0, rtol=0)
    assert (student - ref).abs().max() > 1e-4
    assert (student - other_w).abs().max() > 1e-5


def test_targets_cover_every_linear_and_conv_with_clamped_rank():
    parts = build_tiny_teacher()
    unet = parts.unet
    names = parts.lora_targets()
    assert "conv_in" in names and "conv_out" in names
    assert "down_blocks.0.temp_convs.0.conv1.2" in names  # Conv3d temporal convs
    make_student(parts, LoraSettings(rank=8, dropout=0.0))
    # conv_in has 4 input channels: rank min(8, 4, 64) = 4, as the official files
    assert unet.conv_in.lora_A["default"].weight.shape[0] == 4
    assert unet.down_blocks[0].attentions[0].proj_in.lora_A["default"].weight.shape[0] == 8


def test_save_load_round_trip(tmp_path, inputs):
    x, t, h, w = inputs
    parts = build_tiny_teacher()
    unet = parts.unet.eval()
    make_student(parts, LoraSettings(rank=4, dropout=0.0))
    with torch.no_grad():
        for _name, p in unet.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
        out = call_unet(unet, x, t, h, timestep_cond=w)
    folder = save_student(parts, tmp_path / "student", {"base_model": "tiny"})
    assert (folder / "student.safetensors").is_file() and (folder / "student.json").is_file()
    assert not list(tmp_path.glob(".*tmp"))
    state, meta = read_student(folder)
    assert meta["format"] == "t2vturbo-student" and meta["base_model"] == "tiny"
    fresh_parts = build_tiny_teacher()
    fresh = fresh_parts.unet.eval()
    load_student_weights(fresh_parts, state, meta)
    with torch.no_grad():
        again = call_unet(fresh, x, t, h, timestep_cond=w)
    torch.testing.assert_close(again, out, atol=1e-5, rtol=0)


def test_block_checkpointing_gives_the_same_gradients(inputs):
    x, t, h, w = inputs
    grads = []
    for ckpt in (False, True):
        parts = build_tiny_teacher()
        unet = parts.unet
        torch.manual_seed(0)  # same LoRA init in both runs
        make_student(parts, LoraSettings(rank=4, dropout=0.0))
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        unet.train()
        if ckpt:
            assert parts.enable_block_checkpointing() == len(unet.down_blocks) + 1 + len(unet.up_blocks)
        call_unet(unet, x, t, h, timestep_cond=w).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-4)
