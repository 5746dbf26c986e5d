"""The Teacher contract, written once and run over every family t2vturbo loads: the embedded tiny teacher, a
ModelScope-layout diffusers folder, a VideoCrafter2 conversion (that one needs the small VC2 fixture in ../shared),
the tiny Wan, the tiny Wan2.2 (two experts) and Wan2.2-5B, and a third, toy family defined in THIS file: a few
lines of torch implementing the protocol, which the core distils, samples and exports unchanged. That is the proof
that a family is one module.

Each family must give: (x0, eps) that recompose its input; a fresh student equal to its teacher; a sampler that
calls the network once per step; a finite distillation step in which only the adapter and the guidance projection
receive gradients; an export that loads back and runs to the student's numbers; and an exported pipeline that
reproduces ``t2vturbo sample --student`` with no options given.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_path
from torch import nn

from t2vturbo.consistency import guidance_embedding
from t2vturbo.schedules import VPSchedule
from t2vturbo.student import LoraSettings, guidance_projection, make_student, merge_lora, save_student
from t2vturbo.teachers import Teacher, load_teacher
from t2vturbo.teachers.loading import Family, register_family, unregister_family


# ---------------------------------------------------------------------------------------------- the toy family
class ToyNet(nn.Module):
    """A denoiser in a few lines: per-position linears over the latent channels, conditioned on the timestep
    (through diffusers' TimestepEmbedding, which takes a student's guidance projection as ``cond_proj``) and the
    mean text state."""

    def __init__(self, channels: int = 4, width: int = 16, text_dim: int = 8):
        from diffusers.models.embeddings import TimestepEmbedding

        super().__init__()
        self.width = width
        self.time_embedding = TimestepEmbedding(width, width)
        self.text_proj = nn.Linear(text_dim, width)
        self.conv_in = nn.Linear(channels, width)
        self.conv_out = nn.Linear(width, channels)

    def forward(self, x, t, text, w_emb=None):
        from diffusers.models.embeddings import get_timestep_embedding

        t_emb = get_timestep_embedding(torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]),
                                       self.width).to(x.dtype)
        cond = self.time_embedding(t_emb, condition=w_emb) + self.text_proj(text.mean(1))
        h = self.conv_in(x.movedim(1, -1)) + cond[:, None, None, None, :]
        return self.conv_out(torch.nn.functional.silu(h)).movedim(-1, 1)


class ToyTeacher(Teacher):
    """The toy family: latents are 2x-pooled pixels through a 1x1 conv, text a hashed bag of words."""

    plan = {"lora_targets": "conv_in, conv_out, text_proj", "solver": "DDIM, N={n}"}

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ToyNet()
            self.vae = nn.ModuleDict({"enc": nn.Conv3d(3, 4, 1), "dec": nn.Conv3d(4, 3, 1)})
            self.text_encoder = nn.Embedding(64, 8)
        self.name, self.schedule, self.stored_defaults = "toy", VPSchedule.standard(), {}

    @property
    def network(self):
        return self.net

    def lora_targets(self, wanted="all"):
        return ["conv_in", "conv_out", "text_proj"]

    def enable_block_checkpointing(self):
        return 0

    def native_video(self):
        native = {"frames": 4, "height": 8, "width": 8, "fps": 8}
        return {k: int(self.stored_defaults.get(k, v)) for k, v in native.items()}

    def latent_shape(self, frames, height, width):
        return (4, frames, height // 2, width // 2)

    def encode_text(self, prompts):
        ids = [[zlib.crc32(w.encode()) % 64 for w in p.split()][:6] for p in prompts]
        ids = torch.tensor([row + [0] * (6 - len(row)) for row in ids], device=self.device)
        return self.text_encoder(ids).to(self.dtype)

    def encode_video(self, pixels, generator=None):
        x = torch.nn.functional.avg_pool3d(pixels.permute(0, 2, 1, 3, 4) * 2 - 1, (1, 2, 2))
        return self.vae["enc"](x.to(self.dtype))

    def decode_video(self, latents, frames=None, chunk=0):
        if frames is not None:
            latents = latents[:, :, frames]
        x = self.vae["dec"](torch.nn.functional.interpolate(latents, scale_factor=(1, 2, 2)))
        return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    def denoise(self, x, t, text, guidance_cond=None, fps=None, network=None, motion_cond=None):
        assert motion_cond is None
        return self.schedule.to_x0_eps((network or self.net)(x, t, text, guidance_cond), x, t)

    def write_pipeline(self, folder, *, guidance, origin_steps, dtype, fps, base_spec):
        from safetensors.torch import save_file

        from t2vturbo.student import fold_guidance

        merge_lora(self.net)
        fold_guidance(self.guidance_embedder(), guidance)
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "net.safetensors"))
        return {"how_to_run": "ToyNet().load_state_dict(load_file('DIR/net.safetensors'))"}

    def write_adapter(self, folder, *, guidance, base_spec, meta):
        from t2vturbo.student import save_student

        save_student(self, folder, meta)
        return {"how_to_run": "t2vturbo sample --student DIR"}


def is_toy(spec: str) -> bool:
    return spec == "toy" or (Path(spec) / "net.safetensors").is_file()


def load_toy(spec: str) -> ToyTeacher:
    """``toy`` (random weights) or an exported toy folder (the merged network, guidance folded, its defaults)."""
    teacher = ToyTeacher()
    if spec != "toy":
        from safetensors.torch import load_file

        from t2vturbo.teachers import DEFAULTS_FILE

        teacher.net.load_state_dict(load_file(str(Path(spec) / "net.safetensors")))
        teacher.stored_defaults = json.loads((Path(spec) / DEFAULTS_FILE).read_text())
    return teacher


@pytest.fixture
def toy_family():
    register_family(Family("toy", ToyTeacher, is_toy, load_toy))
    yield
    unregister_family("toy")


# ---------------------------------------------------------------------------------------------- the real families
FAMILIES = ("tiny", "modelscope-folder", "vc2-conversion", "tiny-wan", "tiny-wan22", "tiny-wan22-5b", "toy")


def _modelscope_folder(root):
    from t2vturbo.teachers.unet3d import save_unet3d_teacher
    from t2vturbo.tiny import build_tiny_teacher

    parts = build_tiny_teacher(seed=5)
    parts.stored_defaults = {}  # a ModelScope-layout folder records no sampling defaults
    return str(save_unet3d_teacher(parts, root / "modelscope"))


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
            "vc2-conversion": lambda: _vc2_folder(root), "tiny-wan": lambda: "tiny-wan",
            "tiny-wan22": lambda: "tiny-wan22", "tiny-wan22-5b": lambda: "tiny-wan22-5b",
            "toy": lambda: "toy"}[request.param]()
    return request.param, spec


@pytest.fixture
def spec(family, request):
    name, spec = family
    if name == "toy":
        request.getfixturevalue("toy_family")
    return spec


def _small(teacher) -> dict[str, int]:
    """A small clip the family takes (Wan: 1 + 4k frames, 16-pixel multiples)."""
    native = teacher.native_video()
    frames = 5 if teacher.temporal_factor > 1 else 2
    side = min(native["height"], native["width"], 32)
    return dict(frames=frames, height=side, width=side)


def _inputs(teacher, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, f, h, w = teacher.latent_shape(**_small(teacher))
    x = torch.randn(2, c, f, h, w, generator=g)
    t = torch.tensor([500, 19]) if isinstance(teacher.schedule, VPSchedule) else torch.tensor([900.0, 250.0])
    return x, t, teacher.encode_text(["a red circle moving left", ""])


def _randomise_student(teacher, seed=1):
    """A student that is not the teacher: random LoRA B and guidance projection."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in teacher.network.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def test_family_implements_the_teacher_protocol(spec):
    teacher = load_teacher(spec)
    assert isinstance(teacher, Teacher)
    x, t, h = _inputs(teacher)
    with torch.no_grad():
        x0, eps = teacher.denoise(x, t, h, fps=teacher.default_fps)
    assert x0.shape == x.shape and eps.shape == x.shape
    # (x0, eps) is the common form: noising x0 with eps at t gives back the input
    torch.testing.assert_close(teacher.schedule.add_noise(x0.float(), eps.float(), t), x, atol=1e-4, rtol=1e-4)
    shape = _small(teacher)
    pixels = torch.rand(1, shape["frames"], 3, shape["height"], shape["width"],
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = teacher.encode_video(pixels)
        video = teacher.decode_video(latents)
    assert tuple(latents.shape[1:]) == teacher.latent_shape(**shape)
    assert video.shape == pixels.shape and 0 <= float(video.min()) and float(video.max()) <= 1
    assert teacher.pixel_frames(latents.shape[2]) == shape["frames"]
    assert teacher.encode_text(["a red circle moving left"]).shape[0] == 1
    assert teacher.lora_targets() and guidance_projection(teacher) is None


def test_fresh_student_equals_its_teacher(spec):
    teacher = load_teacher(spec)
    x, t, h = _inputs(teacher)
    with torch.no_grad():
        before, _ = teacher.denoise(x, t, h, fps=teacher.default_fps)
    make_student(teacher, LoraSettings(rank=4))
    with torch.no_grad():
        after, _ = teacher.denoise(x, t, h, guidance_cond=guidance_embedding(torch.tensor([5.0, 9.0])),
                                   fps=teacher.default_fps)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_sampler_calls_the_network_once_per_step(spec):
    from t2vturbo.sampling import sample_video

    teacher = load_teacher(spec)
    make_student(teacher, LoraSettings(rank=4))
    calls = []
    hook = teacher.network.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        out = sample_video(teacher, ["a red circle moving left"], steps=3, mode="student", **_small(teacher))
        assert len(calls) == 3 and len(out.timesteps) == 3
        calls.clear()
        out = sample_video(teacher, ["a red circle moving left"], steps=2, mode="teacher", **_small(teacher))
        assert len(calls) == 2  # the conditional and unconditional halves go through in one batch
    finally:
        hook.remove()
    assert out.videos.shape[:2] == (1, _small(teacher)["frames"]) and torch.isfinite(out.videos).all()


def test_distill_step_is_finite_and_trains_only_lora_and_guidance(spec, tmp_path):
    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    shape = _small(load_teacher(spec))
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", [
        f"model.teacher={spec}", "train.batch_size=1", "sample.prompts=[]", "lora.rank=4",
        f"video.frames={shape['frames']}", f"video.height={shape['height']}", f"video.width={shape['width']}"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    pixels, captions = d.stream.next_batch()
    loss, metrics = d.training_step(pixels, captions)
    assert torch.isfinite(loss), metrics
    assert set(metrics) >= {"loss_cd", *(f"reward/{r.name}" for r in recipe.rewards)}
    loss.backward()
    got = {n for n, p in d.network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got, "no parameter received a gradient"
    assert all("lora_" in n or "cond_proj" in n for n in got), sorted(got)[:5]
    assert any("cond_proj" in n for n in got) and any("lora_B" in n for n in got)


def test_export_reproduces_sample_student_with_no_options(spec, tmp_path):
    """The exported pipeline, run the way its folder says (guidance folded, the student's own steps, shape and
    fps), gives the frames ``t2vturbo sample --student`` gives with no options: the defaults have one source."""
    from t2vturbo.export import export_student
    from t2vturbo.generate import generate_videos
    from t2vturbo.video import read_video

    teacher = load_teacher(spec)
    make_student(teacher, LoraSettings(rank=4))
    _randomise_student(teacher)
    shape = _small(teacher)
    # one step: a UNet3D export runs diffusers' LCMScheduler timesteps (999, 759, 499, 259 for 4 steps), the
    # student the reference's (999, 759, 519, 279); they agree at one step, and everything else must match
    meta = {"base_model": spec, "lora": {"rank": 4}, "default_guidance": 6.0, "default_steps": 1,
            "video": {**shape, "fps": 8}}
    student = save_student(teacher, tmp_path / "student", meta)
    ours = generate_videos(["a red circle moving left"], [tmp_path / "ours"], student=str(student))[0]
    out = export_student(student, out_dir=tmp_path / "exported")
    info = json.loads((out / "t2vturbo.json").read_text())
    assert info["guidance_folded"] == 6.0 and info["default_steps"] == 1
    if spec.startswith("tiny-wan"):  # the stock WanPipeline (Wan2.1, Wan2.2), as the export's message says to run it
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        torch.manual_seed(0)
        theirs = pipe("a red circle moving left", num_inference_steps=1, guidance_scale=1.0, num_frames=shape["frames"],
                      height=shape["height"], width=shape["width"], generator=torch.Generator().manual_seed(0),
                      output_type="pt").frames[0].float()
    else:  # t2vturbo samples the exported folder as stock diffusers would (tests/test_export.py checks that)
        other = generate_videos(["a red circle moving left"], [tmp_path / "theirs"], model=str(out),
                                student=None)[0]
        assert other.mode == "student" and other.steps == 1
        theirs = read_video(other.path).float()
    mine = read_video(ours.path).float()
    assert ours.steps == 1 and mine.shape == theirs.shape
    assert float((mine - theirs).abs().mean()) < 1 / 255
