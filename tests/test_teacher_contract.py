"""The same checks over every UNet3D teacher t2vturbo loads: the embedded tiny teacher, a ModelScope-layout
diffusers folder, and a VideoCrafter2 conversion (that one needs the small VC2 fixture in ../shared). The Wan
family's versions of these checks (its inputs are a transformer's) are in tests/test_wan.py.

Each family must give: a fresh student equal to its teacher; a sampler that calls the UNet once per step; an
export that stock diffusers runs to the same numbers; a finite distillation step in which only the LoRA and the
guidance projection receive gradients.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, shared_path

from t2vturbo.consistency import guidance_embedding
from t2vturbo.student import LoraSettings, make_student, save_student
from t2vturbo.teachers import call_unet, load_teacher
from t2vturbo.tiny import build_tiny_teacher

FAMILIES = ("tiny", "modelscope-folder", "vc2-conversion")


def _modelscope_folder(root):
    parts = build_tiny_teacher(seed=5)
    parts.unet.save_pretrained(root / "unet")
    parts.vae.save_pretrained(root / "vae")
    parts.text_encoder.save_pretrained(root / "text_encoder")
    parts.tokenizer.save_pretrained(str(root / "tokenizer"))
    (root / "scheduler").mkdir()
    from t2vturbo.schedules import VPSchedule

    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(VPSchedule.standard().scheduler_config()))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    return str(root)


def _vc2_folder(root):
    from test_vc2 import _ldm_vae_state, _open_clip_text

    from t2vturbo import convert

    state = convert.read_vc2_state(shared_path("fixtures", "vc2_small", "model.ckpt"))
    state = {k: v for k, v in state.items() if k.startswith(convert.UNET_PREFIX)}
    state.update({convert.VAE_PREFIX + k: v for k, v in _ldm_vae_state(torch.Generator().manual_seed(2)).items()})
    state.update({convert.TEXT_PREFIX + k: v for k, v in _open_clip_text(heads=1).state_dict().items()})
    return str(convert.save_converted(convert.convert_vc2_state(state), root / "vc2"))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    spec = {"tiny": lambda: "tiny", "modelscope-folder": lambda: _modelscope_folder(root),
            "vc2-conversion": lambda: _vc2_folder(root)}[request.param]()
    return request.param, spec


def _inputs(parts, seed=0):
    g = torch.Generator().manual_seed(seed)
    # the deepest level must keep a few pixels: GroupNorm over a 1x1 map amplifies float rounding without bound
    size = 2 ** (len(parts.unet.config.block_out_channels) + 1)
    x = torch.randn(2, parts.unet.config.in_channels, 2, size, size, generator=g)
    ids = parts.tokenizer(["a red circle moving left", ""], padding="max_length",
                          max_length=parts.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        h = parts.text_encoder(ids)[0]
    return x, torch.tensor([500, 19]), h


def test_family_implements_the_teacher_protocol(family):
    from t2vturbo.consistency import predict_x0
    from t2vturbo.teachers import Teacher

    _, spec = family
    parts = load_teacher(spec)
    assert isinstance(parts, Teacher)
    x, t, h = _inputs(parts)
    with torch.no_grad():
        x0, eps = parts.denoise(x, t, h, fps=parts.default_fps)
        ref = call_unet(parts.unet, x, t, h, fps=parts.default_fps)
    if parts.schedule.prediction_type == "epsilon":  # ModelScope, VC2
        torch.testing.assert_close(eps, ref, atol=0, rtol=0)
        torch.testing.assert_close(x0, predict_x0(ref, x, parts.alphas_cumprod[t]), atol=0, rtol=0)
    else:  # the shipped tiny teacher predicts v = sqrt(a) eps - sqrt(1 - a) x0
        a = parts.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        torch.testing.assert_close(x0, a.sqrt() * x - (1 - a).sqrt() * ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eps, (1 - a).sqrt() * x + a.sqrt() * ref, atol=1e-5, rtol=1e-5)
    assert parts.schedule.consistency_timesteps(4) == [999, 759, 519, 279]
    native = parts.native_video()
    pixels = torch.rand(1, 2, 3, native["height"], native["width"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        video = parts.decode_video(parts.encode_video(pixels))
    assert video.shape == pixels.shape and 0 <= float(video.min()) and float(video.max()) <= 1
    assert parts.encode_text(["a red circle moving left"]).shape[0] == 1


def test_fresh_student_equals_its_teacher(family):
    _, spec = family
    parts = load_teacher(spec)
    x, t, h = _inputs(parts)
    with torch.no_grad():
        before = call_unet(parts.unet, x, t, h, fps=parts.default_fps)
    make_student(parts.unet, LoraSettings(rank=4))
    with torch.no_grad():
        after = call_unet(parts.unet, x, t, h, timestep_cond=guidance_embedding(torch.tensor([5.0, 9.0])),
                          fps=parts.default_fps)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_sampler_calls_the_unet_once_per_step(family):
    from t2vturbo.sampling import sample_video

    _, spec = family
    parts = load_teacher(spec)
    make_student(parts.unet, LoraSettings(rank=4))
    calls = []
    hook = parts.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    native = parts.native_video()
    size = dict(frames=2, height=min(native["height"], 16), width=min(native["width"], 16))
    try:
        out = sample_video(parts, ["a red circle moving left"], steps=3, mode="student", **size)
        assert len(calls) == 3 and len(out.timesteps) == 3
        calls.clear()
        out = sample_video(parts, ["a red circle moving left"], steps=2, mode="teacher", **size)
        assert len(calls) == 2  # the conditional and unconditional halves go through in one batch
    finally:
        hook.remove()
    assert out.videos.shape[:2] == (1, 2) and torch.isfinite(out.videos).all()


def test_export_runs_in_stock_diffusers_to_the_same_numbers(family, tmp_path):
    from diffusers import UNet3DConditionModel

    from t2vturbo.export import export_student

    _, spec = family
    parts = load_teacher(spec)
    make_student(parts.unet, LoraSettings(rank=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a student that is not the teacher: random LoRA B and guidance projection
        for p in parts.unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    student_dir = save_student(parts.unet, tmp_path / "student", {"base_model": spec, "lora": {"rank": 4}})
    out = export_student(student_dir, spec, format="diffusers", out_dir=tmp_path / "exported", guidance=6.0)
    stock = UNet3DConditionModel.from_pretrained(out / "unet").eval()
    assert stock.config.time_cond_proj_dim is None  # a plain UNet: guidance (and fps) folded into the weights
    x, t, h = _inputs(parts, seed=2)
    with torch.no_grad():
        ours = call_unet(parts.unet, x, t, h, timestep_cond=guidance_embedding(torch.tensor([6.0, 6.0])),
                         fps=parts.default_fps)
        theirs = stock(x, t, encoder_hidden_states=h).sample
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_distill_step_is_finite_and_trains_only_lora_and_guidance(family, tmp_path):
    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    name, spec = family
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", [f"model.teacher={spec}", "train.batch_size=1",
                                                          "sample.prompts=[]", "lora.rank=4"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    pixels, captions = d.stream.next_batch()
    loss, metrics = d.training_step(pixels, captions)
    assert torch.isfinite(loss), (name, metrics)
    loss.backward()
    got = {n for n, p in d.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got, "no parameter received a gradient"
    assert all("lora_" in n or "cond_proj" in n for n in got), sorted(got)[:5]
    assert any("cond_proj" in n for n in got) and any("lora_B" in n for n in got)
