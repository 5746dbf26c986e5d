"""Opt-in checks on the full-size ModelScope UNet (1.4e9 params, random weights): `python -m pytest -m slow`."""

import pytest
import torch
from helpers import unet_teacher

from t2vturbo.consistency import guidance_embedding
from t2vturbo.student import LoraSettings, make_student, teacher_mode
from t2vturbo.teachers import call_unet


@pytest.mark.slow
def test_full_size_modelscope_student_equals_teacher_at_init():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel().eval()  # the ModelScope configuration is diffusers' default
    assert 1.40e9 < sum(p.numel() for p in unet.parameters()) < 1.42e9
    make_student(unet_teacher(unet), LoraSettings(rank=32, dropout=0.0))
    lora = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert 0 < lora < 0.05 * 1.41e9
    x = torch.randn(1, 4, 2, 32, 32)
    h = torch.randn(1, 77, 1024)
    t = torch.tensor([500])
    with torch.no_grad():
        student = call_unet(unet, x, t, h, timestep_cond=guidance_embedding(torch.tensor([7.5])))
        with teacher_mode(unet):
            teacher = call_unet(unet, x, t, h)
    assert student.shape == x.shape
    torch.testing.assert_close(student, teacher, atol=0, rtol=0)
