"""Reward models: tiny random weights saved in the official file layouts, loaded through the registry, compared
with a direct computation (torchvision transforms + the library model); gradients reach the pixels."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from t2vturbo.errors import CheckpointError, ConfigError, MissingWeightError, UnknownRewardError
from t2vturbo.rewards import available_rewards, load_reward

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROMPTS = ["a red sports car drifting around a corner", "a corgi running on the beach at sunset"]

# open_clip CLIP of the ViT-H-14 family at tiny width (same module classes, same key names).
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_VICLIP = dict(
    vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=2, text_heads=2, embed_dim=16, patch_size=28
)


def _frames(b=2, t=3, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=g)


@pytest.fixture(scope="module")
def open_clip_model():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(**TINY_OPEN_CLIP).eval()


def _open_clip_direct(model, frames, prompts, pixels_fn):
    import open_clip

    b, t = frames.shape[:2]
    with torch.no_grad():
        pix = torch.stack([pixels_fn(f) for f in frames.flatten(0, 1)])
        img = model.encode_image(pix, normalize=True).view(b, t, -1)
        txt = model.encode_text(open_clip.tokenize(prompts), normalize=True)
    return (img * txt[:, None]).sum(-1).mean(1)


def _hps_direct_pixels(img):
    # resize the longest side to 224 (48x64 -> 168x224), pad 28 above and below with black, normalise
    h, w = img.shape[-2:]
    s = 224 / max(h, w)
    img = TF.resize(img, [round(h * s), round(w * s)], InterpolationMode.BICUBIC, antialias=True)
    ph, pw = 224 - img.shape[-2], 224 - img.shape[-1]
    img = TF.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(img, CLIP_MEAN, CLIP_STD)


def _clip_direct_pixels(img):
    img = TF.resize(img, [224, 224], InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.center_crop(img, [224, 224]), CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("name", ["hpsv2", "hpsv2.1"])
def test_hps_from_official_layout_matches_direct(name, open_clip_model, tmp_path):
    path = tmp_path / ("HPS_v2_compressed.pt" if name == "hpsv2" else "HPS_v2.1_compressed.pt")
    torch.save({"state_dict": open_clip_model.state_dict()}, path)  # the official nesting
    reward = load_reward(name, checkpoint=str(path), model_cfg=TINY_OPEN_CLIP)
    frames = _frames()
    with torch.no_grad():
        got = reward(frames, PROMPTS)
    want = _open_clip_direct(open_clip_model, frames, PROMPTS, _hps_direct_pixels)
    assert reward.kind == "image" and got.shape == (2,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("filename", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_clip_from_hub_layout_matches_direct(filename, open_clip_model, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in open_clip_model.state_dict().items()}
    if filename.endswith(".safetensors"):
        save_file(state, tmp_path / filename)
    else:
        torch.save(state, tmp_path / filename)  # the hub's flat pickle
    reward = load_reward("clip", checkpoint=str(tmp_path), model_cfg=TINY_OPEN_CLIP)  # folder: file found inside
    frames = _frames()
    with torch.no_grad():
        got = reward(frames, PROMPTS)
    want = _open_clip_direct(open_clip_model, frames, PROMPTS, _clip_direct_pixels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _hf_clip_tokenizer(tmp_path):
    """The processor's CLIPTokenizer rebuilt offline from the CLIP BPE file that open_clip ships."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in SimpleTokenizer().encoder.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    merges = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="<|endoftext|>")


def _tiny_pickscore(folder):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)  # the hub layout: config.json + model.safetensors
    return model


def test_pickscore_from_hub_layout_matches_processor_path(tmp_path):
    model = _tiny_pickscore(tmp_path / "PickScore_v1")
    reward = load_reward("pickscore", checkpoint=str(tmp_path / "PickScore_v1"))
    frames = _frames()
    with torch.no_grad():
        got = reward(frames, PROMPTS)
        # the reference: CLIP_NORMALIZE(CENTER_CROP(CLIP_RESIZE(x))) and processor(text, padding=True, max_length=77)
        pix = torch.stack([_clip_direct_pixels(f) for f in frames.flatten(0, 1)])
        img = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        img = (img / img.norm(dim=-1, keepdim=True)).view(2, 3, -1)
        text_in = _hf_clip_tokenizer(tmp_path)(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.text_projection(model.text_model(**text_in).pooler_output)
        txt = txt / txt.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, (img * txt[:, None]).sum(-1).mean(1), atol=1e-5, rtol=1e-5)


def _random_viclip(seed=0):
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig

    torch.manual_seed(seed)
    model = ViCLIP(ViCLIPConfig(**TINY_VICLIP))
    with torch.no_grad():
        for name, p in model.named_parameters():  # every weight random: wrong wiring cannot hide behind 0/1
            if p.ndim >= 2:
                p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    return model.eval()


def test_viclip_from_official_layout_matches_model(tmp_path):
    model = _random_viclip()
    path = tmp_path / "ViClip-InternVid-10M-FLT.pth"
    torch.save({"model": model.state_dict()}, path)
    reward = load_reward("viclip", checkpoint=str(path), **TINY_VICLIP)
    frames = _frames(t=8, h=56, w=72)
    with torch.no_grad():
        got = reward(frames, PROMPTS)
        want = model(frames, PROMPTS)
    assert reward.kind == "video" and reward.num_frames == 8
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="8 frames"):
        reward(frames[:, :5], PROMPTS)


def test_viclip_full_size_keys_and_shapes_on_meta():
    from t2vturbo.rewards.viclip import viclip_state_dict_shapes

    shapes = viclip_state_dict_shapes()
    assert len(shapes) == 447
    assert shapes["temp"] == ()
    assert shapes["vision_encoder.conv1.weight"] == (1024, 3, 1, 14, 14)
    assert shapes["vision_encoder.positional_embedding"] == (257, 1024)
    assert shapes["vision_encoder.temporal_positional_embedding"] == (1, 8, 1024)
    assert shapes["vision_encoder.proj"] == (1024, 768)
    assert shapes["vision_encoder.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert shapes["vision_encoder.transformer.resblocks.23.mlp.c_fc.weight"] == (4096, 1024)
    assert shapes["text_encoder.token_embedding.weight"] == (49408, 768)
    assert shapes["text_encoder.positional_embedding"] == (32, 768)
    assert shapes["text_encoder.text_projection"] == (768, 768)
    assert shapes["text_encoder.transformer.resblocks.11.ln_2.bias"] == (768,)
    assert "text_encoder.transformer.resblocks.12.ln_2.bias" not in shapes
    assert sum(k.startswith("vision_encoder.") for k in shapes) == 297


def test_open_clip_vit_h_14_builds_on_meta():
    from open_clip.model import CLIP

    from t2vturbo.rewards.clip import open_clip_config

    with torch.device("meta"):
        model = CLIP(**open_clip_config("ViT-H-14"))
    assert 9.8e8 < sum(p.numel() for p in model.parameters()) < 9.9e8  # docs/formats.md §6: 9.86e8


def test_gradients_reach_pixels_for_every_reward(open_clip_model, tmp_path):
    torch.save({"state_dict": open_clip_model.state_dict()}, tmp_path / "hps.pt")
    torch.save(open_clip_model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    torch.save({"model": _random_viclip().state_dict()}, tmp_path / "viclip.pth")
    _tiny_pickscore(tmp_path / "pick")
    rewards = {
        "toy-image": {},
        "toy-video": {},
        "hpsv2": dict(checkpoint=str(tmp_path / "hps.pt"), model_cfg=TINY_OPEN_CLIP),
        "hpsv2.1": dict(checkpoint=str(tmp_path / "hps.pt"), model_cfg=TINY_OPEN_CLIP),
        "clip": dict(checkpoint=str(tmp_path / "open_clip_pytorch_model.bin"), model_cfg=TINY_OPEN_CLIP),
        "pickscore": dict(checkpoint=str(tmp_path / "pick")),
        "viclip": dict(checkpoint=str(tmp_path / "viclip.pth"), **TINY_VICLIP),
    }
    for name, kwargs in rewards.items():
        reward = load_reward(name, **kwargs)
        assert not any(p.requires_grad for p in reward.parameters()), name
        frames = _frames(b=2, t=8, h=40, w=56, seed=1).requires_grad_(True)
        score = reward(frames, ["a red car", "a blue sea"])
        assert score.shape == (2,) and torch.isfinite(score).all(), name
        (grad,) = torch.autograd.grad(score.sum(), frames)
        assert grad.abs().sum() > 0, f"{name}: no gradient reaches the pixels"
        assert (grad[0].abs().sum() > 0) and (grad[1].abs().sum() > 0), name


def test_registry_lists_builtins_and_rejects_unknown():
    names = set(available_rewards())
    assert {"toy-image", "toy-video", "hpsv2", "hpsv2.1", "clip", "pickscore", "viclip"} <= names
    with pytest.raises(UnknownRewardError) as err:
        load_reward("hps-v3")
    msg = str(err.value)
    assert "hps-v3" in msg and "hpsv2.1" in msg and "viclip" in msg and "\n" not in msg


def test_module_factory_name_loads_a_user_reward():
    reward = load_reward("t2vturbo.rewards.toy:load_toy_image")
    score = reward(torch.ones(1, 2, 3, 8, 8) * torch.tensor([1.0, 0, 0]).view(1, 1, 3, 1, 1), ["red"])
    assert score.item() == pytest.approx(0.0)
    with pytest.raises(UnknownRewardError, match="cannot import"):
        load_reward("t2vturbo.rewards.toy:nope")


def test_missing_weights_say_file_repo_and_flag(monkeypatch, tmp_path):
    import t2vturbo.hub
    import t2vturbo.rewards.clip

    # behave as on a machine whose HF cache is empty, even where the real weights are cached
    monkeypatch.setattr(t2vturbo.hub, "cached_hub_file", lambda repo, filename: None)
    monkeypatch.setattr(t2vturbo.rewards.clip, "cached_hub_file", lambda repo, filename: None)
    for name, needle in [("hpsv2.1", "HPS_v2.1_compressed.pt"), ("viclip", "ViClip-InternVid-10M-FLT.pth"),
                         ("clip", "open_clip_pytorch_model.bin")]:
        with pytest.raises(MissingWeightError) as err:
            load_reward(name)
        msg = str(err.value)
        assert needle in msg and f"--reward-checkpoint {name}=PATH" in msg and "\n" not in msg
    with pytest.raises(MissingWeightError, match="pickscore"):
        load_reward("pickscore", checkpoint=str(tmp_path / "nowhere"))


def test_wrong_layout_unknown_option_and_wrong_size(open_clip_model, tmp_path):
    torch.save({"state_dict": open_clip_model.state_dict()}, tmp_path / "hps.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_reward("hpsv2", checkpoint=str(tmp_path / "hps.pt"))  # full ViT-H-14 expected, tiny file given
    with pytest.raises(CheckpointError, match="expected layout"):
        torch.save({"model": {"x": 1}}, tmp_path / "bad.pth")
        load_reward("viclip", checkpoint=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="accepted"):
        load_reward("viclip", checkpoint=str(tmp_path / "hps.pt"), widht=3)
