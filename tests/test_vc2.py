"""VideoCrafter2: lvdm -> diffusers conversion, the fps embedding, the official LoRA order, saving a converted folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import shared_path
from helpers import unet_teacher
from safetensors.torch import load_file

from t2vturbo import convert
from t2vturbo.errors import CheckpointError
from t2vturbo.teachers import FPSEmbedding, call_unet

ATOL = 5e-5


def _inputs():
    # fresh copies: tensors straight from safetensors can take other CPU kernels (see the fixture README)
    return {k: v.clone() for k, v in load_file(shared_path("fixtures", "vc2_small", "inputs.safetensors")).items()}


@pytest.fixture(scope="module")
def fixture_state() -> dict[str, torch.Tensor]:
    state = convert.read_vc2_state(shared_path("fixtures", "vc2_small", "model.ckpt"))
    return {k[len(convert.UNET_PREFIX):]: v for k, v in state.items()}


@pytest.fixture(scope="module")
def teacher_unet(fixture_state):
    return convert.build_vc2_unet(fixture_state).eval()


# ------------------------------------------------------------------------------------------- reference vectors
def test_converted_teacher_reproduces_reference(teacher_unet):
    inp = _inputs()
    expected = load_file(shared_path("fixtures", "vc2_small", "expected.safetensors"))["teacher_out"]
    with torch.no_grad():
        out = call_unet(teacher_unet, inp["x"], inp["timesteps"], inp["context"], fps=inp["fps"])
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < ATOL


def test_converted_student_reproduces_reference():
    state = load_file(shared_path("fixtures", "vc2_small_student", "student_unet.safetensors"))
    unet = convert.build_vc2_unet(state).eval()
    assert unet.time_embedding.cond_proj is not None
    inp = _inputs()
    expected = load_file(shared_path("fixtures", "vc2_small_student", "expected.safetensors"))["student_out"]
    with torch.no_grad():
        out = call_unet(unet, inp["x"], inp["timesteps"], inp["context"], timestep_cond=inp["w_emb"], fps=inp["fps"])
    assert (out - expected).abs().max().item() < ATOL


def test_fps_hook_survives_our_student_wrapping(fixture_state):
    """make_student (peft LoRA on every linear + time_embedding.cond_proj) keeps the fps hook: with the
    reference's guidance projection copied in and LoRA at B = 0, the student matches the reference output."""
    from t2vturbo.student import LoraSettings, make_student

    unet = convert.build_vc2_unet(dict(fixture_state)).eval()
    make_student(unet_teacher(unet), LoraSettings(rank=4, dropout=0.0))
    assert not any(n.startswith("fps_embedding") and "lora" in n for n, _ in unet.named_parameters())
    proj = load_file(shared_path("fixtures", "vc2_small_student", "student_unet.safetensors"))["time_cond_proj.weight"]
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.copy_(proj.float())
    inp = {k: v[:1].clone() for k, v in _inputs().items()}  # first item only (keeps the test fast)
    expected = load_file(shared_path("fixtures", "vc2_small_student", "expected.safetensors"))["student_out"][:1]
    with torch.no_grad():
        out = call_unet(unet, inp["x"], inp["timesteps"], inp["context"], timestep_cond=inp["w_emb"], fps=inp["fps"])
    assert (out - expected).abs().max().item() < ATOL


def test_fps_embedding_changes_output_and_defaults_to_16(teacher_unet):
    inp = _inputs()
    x, t, ctx = inp["x"][:1].clone(), inp["timesteps"][:1], inp["context"][:1].clone()
    with torch.no_grad():
        at16 = call_unet(teacher_unet, x, t, ctx, fps=16)
        at8 = call_unet(teacher_unet, x, t, ctx, fps=torch.tensor([8]))
        default = call_unet(teacher_unet, x, t, ctx)
    assert teacher_unet.fps_embedding.default_fps == 16
    assert not teacher_unet.time_embedding._forward_hooks  # the fps enters per call and leaves no hook behind
    assert torch.equal(default, at16)
    assert (at16 - at8).abs().max().item() > 1e-2


# ------------------------------------------------------------------------------------------- key-by-key checks
_SMALL_DIMS = {320: 32, 640: 64, 1280: 128, 1920: 192, 960: 96, 2560: 256, 5120: 512, 10240: 1024, 1024: 24,
               512: 64, 4096: 512, 2048: 256}


def _full_key_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in shared_path("formats", "vc2_unet_keys.txt").read_text().splitlines():
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        out[m.group(1)] = tuple(int(d) for d in m.group(2).split(",") if d.strip())
    return out


def _small_lvdm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The full key list's names at 1/10 width (levels 32/64/128/128, context 24), random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _full_key_shapes().items():
        small = tuple(_SMALL_DIMS.get(d, d) for d in shape)
        if name.endswith(".bias") or len(small) == 1:
            state[name] = torch.randn(small, generator=gen) * 0.05 + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            fan_in = max(1, torch.Size(small[1:]).numel())
            state[name] = torch.randn(small, generator=gen) / fan_in**0.5
    return state


def test_small_lvdm_state_from_key_list_converts_and_loads_strictly():
    state = _small_lvdm_state()
    unet = convert.build_vc2_unet(state).eval()
    assert unet.config.block_out_channels == (32, 64, 128, 128)
    assert unet.config.cross_attention_dim == 24 and unet.config.time_cond_proj_dim == 256
    # every lvdm tensor landed somewhere, unchanged (Conv1d proj of init_attn squeezed)
    converted = unet.state_dict()
    assert len(converted) == len(state)
    assert torch.equal(converted["down_blocks.1.resnets.0.conv_shortcut.weight"],
                       state["input_blocks.4.0.skip_connection.weight"])
    assert torch.equal(converted["up_blocks.1.upsamplers.0.conv.weight"], state["output_blocks.5.3.conv.weight"])
    assert torch.equal(converted["up_blocks.0.upsamplers.0.conv.weight"], state["output_blocks.2.1.conv.weight"])
    assert torch.equal(converted["transformer_in.proj_in.weight"], state["init_attn.0.proj_in.weight"][..., 0])
    assert torch.equal(converted["fps_embedding.linear_2.bias"], state["fps_embedding.2.bias"])
    with torch.no_grad():
        out = call_unet(unet, torch.randn(1, 4, 2, 8, 8), torch.tensor([500]), torch.randn(1, 7, 24),
                        timestep_cond=torch.randn(1, 256), fps=16)
    assert out.shape == (1, 4, 2, 8, 8) and torch.isfinite(out).all()


def test_key_check_names_the_first_bad_key():
    state = _small_lvdm_state()
    missing = dict(state)
    del missing["middle_block.1.proj_out.weight"]
    with pytest.raises(CheckpointError, match=r"mid_block\.attentions\.0\.proj_out\.weight"):
        convert.build_vc2_unet(missing, device="meta")
    wrong = dict(state)
    wrong["output_blocks.4.0.in_layers.2.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"output_blocks\.4\.0\.in_layers\.2\.weight has shape \(3, 3, 3, 3\)"):
        convert.build_vc2_unet(wrong, device="meta")
    extra = dict(state)
    extra["input_blocks.1.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"input_blocks\.1\.0\.mystery\.weight"):
        convert.build_vc2_unet(extra, device="meta")


def test_full_size_key_names_and_shapes_on_meta():
    shapes = _full_key_shapes()
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    unet = convert.build_vc2_unet(state, device="meta")
    cfg = unet.config
    assert cfg.block_out_channels == (320, 640, 1280, 1280) and cfg.attention_head_dim == 64
    assert cfg.cross_attention_dim == 1024 and cfg.time_cond_proj_dim == 256
    assert tuple(cfg.down_block_types) == ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    target = unet.state_dict()
    assert len(target) == len(shapes) == 1484 + 1  # 1484 VC2 keys + the student's time_cond_proj
    params = sum(t.numel() for k, t in target.items() if not k.startswith(("fps_embedding", "time_embedding.cond")))
    assert abs(params - 1.413e9) / 1.413e9 < 2e-3


def test_official_lora_order_and_shapes_match_the_release_list():
    entries = json.loads(shared_path("formats", "vc2_official_lora_order.json").read_text())
    assert convert.lvdm_lora_module_order() == [e["module"] for e in entries]
    names = convert.vc2_lora_module_names()
    assert len(names) == 575 and len(set(names)) == 575
    state = {k: torch.empty(s, device="meta") for k, s in _full_key_shapes().items()}
    modules = dict(convert.build_vc2_unet(state, device="meta").named_modules())
    for name, entry in zip(names, entries, strict=True):
        assert tuple(modules[name].weight.shape) == tuple(entry["weight"]), name
        assert type(modules[name]).__name__ == entry["type"], name
    assert names[2:5] == ["fps_embedding.linear_1", "fps_embedding.linear_2", "time_embedding.cond_proj"]


def test_official_layout_lora_list_merges_to_w_plus_up_down(teacher_unet, fixture_state, tmp_path):
    official_lora = pytest.importorskip("t2vturbo.teachers.unet3d_files")
    unet = convert.build_vc2_unet(dict(fixture_state)).eval()
    names = convert.vc2_lora_module_names(convert.layout_of(unet))
    base = {n: m.weight.detach().clone() for n, m in unet.named_modules() if n in names}
    gen = torch.Generator().manual_seed(3)
    tensors = []
    pairs = {}
    for name in names:
        if name == "time_embedding.cond_proj":
            w_shape = (unet.time_embedding.linear_1.in_features, 256)
        else:
            w_shape = tuple(base[name].shape)
        r = min(4, w_shape[0], w_shape[1])
        down = torch.randn((r, *w_shape[1:]), generator=gen) * 0.1
        up = torch.randn((w_shape[0], r, *([1] * (len(w_shape) - 2))), generator=gen) * 0.1
        tensors += [up, down]
        pairs[name] = (up, down)
    path = tmp_path / "unet_lora.pt"
    torch.save(tensors, path)
    official_lora.load_official_lora(path, unet_teacher(unet), names)
    modules = dict(unet.named_modules())

    def merged(name):
        up, down = pairs[name]
        return base[name] + (up.flatten(1) @ down.flatten(1)).reshape(base[name].shape)

    # merged outside peft: the fps embedding
    for name in ("fps_embedding.linear_1", "fps_embedding.linear_2"):
        assert torch.allclose(modules[name].weight, merged(name), atol=1e-6)
    # peft layers: a Linear, a Conv2d and a Conv3d behave as W + up @ down
    x2 = torch.randn(2, modules["down_blocks.0.resnets.0.time_emb_proj"].in_features)
    lin = "down_blocks.0.resnets.0.time_emb_proj"
    with torch.no_grad():
        got = modules[lin](x2)
    want = torch.nn.functional.linear(x2, merged(lin), modules[lin].base_layer.bias)
    assert torch.allclose(got, want, atol=1e-5)
    for name, conv in (("conv_in", torch.nn.functional.conv2d), ("down_blocks.0.temp_convs.0.conv1.2", torch.nn.functional.conv3d)):
        layer = modules[name]
        cin = base[name].shape[1]
        x = torch.randn(1, cin, *([4] * (base[name].dim() - 2)))
        with torch.no_grad():
            got = layer(x)
        want = conv(x, merged(name), layer.base_layer.bias, stride=layer.base_layer.stride,
                    padding=layer.base_layer.padding)
        assert torch.allclose(got, want, atol=1e-5), name


# ------------------------------------------------------------------------------------------- whole checkpoint
def _ldm_vae_state(gen: torch.Generator, ch=32, mult=(1, 2), nrb=1, z=4) -> dict[str, torch.Tensor]:
    """A small VAE in the LDM key layout (first_stage_model.*), written from the LDM naming scheme."""
    s: dict[str, tuple] = {}

    def conv(name, cout, cin, k=3):
        s[name + ".weight"], s[name + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        s[name + ".weight"], s[name + ".bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cout, cin), norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def mid(side, c):
        res(f"{side}.mid.block_1", c, c)
        norm(f"{side}.mid.attn_1.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{side}.mid.attn_1.{p}", c, c, 1)
        res(f"{side}.mid.block_2", c, c)

    widths = [ch * m for m in mult]
    conv("encoder.conv_in", ch, 3)
    cin = ch
    for i, w in enumerate(widths):
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", cin, w)
            cin = w
        if i < len(widths) - 1:
            conv(f"encoder.down.{i}.downsample.conv", w, w)
    mid("encoder", cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", 2 * z, cin)
    conv("quant_conv", 2 * z, 2 * z, 1), conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", widths[-1], z)
    mid("decoder", widths[-1])
    cin = widths[-1]
    for i in reversed(range(len(widths))):
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", 3, cin)
    return {k: torch.randn(v, generator=gen) * (0.1 if len(v) > 1 else 1.0) for k, v in s.items()}


def _open_clip_text(width=32, heads=2, layers=3):
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    return TextTransformer(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers,
                           output_dim=16).eval()


def test_vae_conversion_matches_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ldm = _ldm_vae_state(torch.Generator().manual_seed(1))
    vae = convert.build_vae(ldm)
    ours = vae.state_dict()
    theirs = convert_ldm_vae_checkpoint({convert.VAE_PREFIX + k: v for k, v in ldm.items()},
                                        {"down_block_types": ["DownEncoderBlock2D"] * 2,
                                         "up_block_types": ["UpDecoderBlock2D"] * 2})
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v.reshape(ours[k].shape)), k


def test_text_encoder_equals_open_clip_penultimate_layer():
    tower = _open_clip_text()
    text = convert.build_text_encoder(tower.state_dict(), num_heads=2)
    assert text.config.num_hidden_layers == 2  # 3 blocks, the last one dropped
    tokenizer = convert.build_clip_tokenizer()
    # (two known differences, both rare in prompts: HTML entities are not unescaped, and a stand-alone "!"
    # becomes the pad token id 0 as in every HF CLIP tokenizer that pads with "!")
    prompts = ["a corgi running on the beach at sunset", "A red sports car, drifting; Ünïcode. " * 6]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    import open_clip

    assert torch.equal(ids, open_clip.tokenize(prompts))  # the same ids as open_clip's tokenizer (pad 0)
    with torch.no_grad():
        x = tower.token_embedding(ids) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:
            x = block(x, attn_mask=tower.attn_mask)
        want = tower.ln_final(x)
        got = text(ids).last_hidden_state
    assert (got - want).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def small_vc2_state(fixture_state) -> dict[str, torch.Tensor]:
    """A whole small VC2 model.ckpt state_dict: the fixture UNet, a small LDM VAE, a small open_clip text tower."""
    state = {convert.UNET_PREFIX + k: v for k, v in fixture_state.items()}
    state.update({convert.VAE_PREFIX + k: v for k, v in _ldm_vae_state(torch.Generator().manual_seed(2)).items()})
    state.update({convert.TEXT_PREFIX + k: v for k, v in _open_clip_text(heads=1).state_dict().items()})
    return state


def test_convert_save_and_load_teacher_roundtrip(small_vc2_state, tmp_path):
    from t2vturbo.teachers import load_teacher

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": small_vc2_state}, path)
    parts = convert.convert_vc2_checkpoint(path)
    assert parts.default_fps == 16 and parts.tokenizer.model_max_length == 77
    out = convert.save_converted(parts, tmp_path / "vc2-diffusers")
    for sub in ("unet/config.json", "unet/fps_embedding.safetensors", "unet/fps_embedding.json", "vae/config.json",
                "text_encoder/config.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"):
        assert (out / sub).is_file(), sub
    assert not any("fps_embedding" in k for k in load_file(out / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = load_teacher(str(out))
    assert loaded.default_fps == 16 and isinstance(loaded.unet.fps_embedding, FPSEmbedding)
    inp = _inputs()
    expected = load_file(shared_path("fixtures", "vc2_small", "expected.safetensors"))["teacher_out"]
    with torch.no_grad():
        got = call_unet(loaded.unet, inp["x"], inp["timesteps"], inp["context"], fps=inp["fps"])
        ids = loaded.tokenizer(["a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        h1 = loaded.text_encoder(ids).last_hidden_state
        h0 = parts.text_encoder(ids).last_hidden_state
    assert (got - expected).abs().max().item() < ATOL
    assert torch.allclose(h0, h1)


def test_sample_with_converted_small_model_writes_a_video(small_vc2_state, tmp_path):
    sampling = pytest.importorskip("t2vturbo.sampling")
    video = pytest.importorskip("t2vturbo.video")
    from t2vturbo.student import LoraSettings, make_student

    parts = convert.convert_vc2_state(dict(small_vc2_state))
    make_student(parts, LoraSettings(rank=4, dropout=0.0))
    result = sampling.sample_video(parts, ["a dog"], steps=2, frames=4, height=32, width=32, seed=0)
    frames = result.videos if hasattr(result, "videos") else result[0]
    assert frames.shape[-4:] == (4, 3, 32, 32)
    path = video.write_video(frames[0], tmp_path / "dog.mp4", fps=16)
    assert path.is_file() and path.stat().st_size > 0


def test_not_a_vc2_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a VideoCrafter2 model.ckpt"):
        convert.convert_vc2_checkpoint(path)


def test_convert_command_writes_a_loadable_folder(small_vc2_state, tmp_path):
    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    from t2vturbo.teachers import load_teacher

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {k: v.half() for k, v in small_vc2_state.items()}}, ckpt)
    out = tmp_path / "vc2"
    result = CliRunner().invoke(app, ["convert", "vc2", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "unet" / "fps_embedding.json").read_text())["default_fps"] == 16
    loaded = load_teacher(str(out))
    assert loaded.default_fps == 16 and loaded.text_encoder.config.num_hidden_layers == 2
    assert next(iter(load_file(out / "vae" / "diffusion_pytorch_model.safetensors").values())).dtype == torch.float16
    again = CliRunner().invoke(app, ["convert", "vc2", str(ckpt), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    other = CliRunner().invoke(app, ["convert", "sd15", str(ckpt), "--out", str(tmp_path / "x")])
    assert other.exit_code == 2 and "unknown format" in other.output


def test_sample_command_with_official_vc2_lora_writes_a_video(small_vc2_state, tmp_path):
    """The issue's path: converted VC2-layout folder + an official-layout unet_lora.pt -> `t2vturbo sample`."""
    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    from t2vturbo.teachers import load_teacher

    folder = convert.save_converted(convert.convert_vc2_state(dict(small_vc2_state)), tmp_path / "vc2")
    unet = load_teacher(str(folder)).unet
    names = convert.vc2_lora_module_names(convert.layout_of(unet))
    gen = torch.Generator().manual_seed(5)
    tensors = []
    for name in names:
        shape = (unet.time_embedding.linear_1.in_features, 256) if name == "time_embedding.cond_proj" \
            else tuple(unet.get_submodule(name).weight.shape)
        r = min(4, shape[0], shape[1])
        tensors += [torch.randn((shape[0], r, *([1] * (len(shape) - 2))), generator=gen) * 0.01,
                    torch.randn((r, *shape[1:]), generator=gen) * 0.01]
    torch.save(tensors, tmp_path / "unet_lora.pt")
    out = tmp_path / "dog.mp4"
    result = CliRunner().invoke(app, ["sample", "a dog", "--model", str(folder), "--student", str(tmp_path / "unet_lora.pt"),
                                      "--frames", "4", "--height", "32", "--width", "32", "--steps", "2",
                                      "--fps", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0
