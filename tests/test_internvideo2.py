"""InternVideo2 stage-2 reward: reproduces the reference vectors, loads the official key names, gives pixel gradients."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from t2vturbo.errors import CheckpointError, ConfigError, MissingWeightError
from t2vturbo.rewards import load_reward
from t2vturbo.rewards.internvideo2 import (
    InternVideo2,
    InternVideo2Config,
    interpolate_pos_embed,
    select_official_state,
)
from t2vturbo.rewards.loading import check_state_dict

ATOL = 1e-5


def _small_options() -> dict:
    """Architecture of fixtures/internvideo2_small (its README and bert_config.json)."""
    bert = json.loads(shared_path("fixtures", "internvideo2_small", "bert_config.json").read_text())
    return dict(
        vision_width=64, vision_layers=2, vision_heads=4, vision_mlp=int(64 * 48 / 11), pool_heads=4,
        clip_embed_dim=32, embed_dim=32, vocab_size=bert["vocab_size"], text_width=bert["hidden_size"],
        fusion_layer=bert["fusion_layer"], text_heads=bert["num_attention_heads"],
        text_intermediate=bert["intermediate_size"], text_max_positions=bert["max_position_embeddings"],
    )


def _fixture(name: str):
    return shared_path("fixtures", "internvideo2_small", name)


@pytest.fixture(scope="module")
def model() -> InternVideo2:
    return load_reward("internvideo2", checkpoint=str(_fixture("internvideo2.pt")),
                       vocab_file=str(_fixture("bert_vocab.txt")), **_small_options())


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return {k: v.clone().float() if v.is_floating_point() else v.clone()
            for k, v in load_file(_fixture("inputs.safetensors")).items()}


def _prompts() -> list[str]:
    return _fixture("prompts.txt").read_text().splitlines()


def test_tokenizer_reproduces_reference_quirk(model, inputs):
    ids, mask = model.tokenize(_prompts())
    assert torch.equal(ids, inputs["input_ids"])  # [CLS] words, no [SEP], [PAD] = 0
    assert torch.equal(mask, inputs["attention_mask"])


def test_pos_embed_interpolated_from_4_to_8_frames(model):
    expected = load_file(_fixture("expected.safetensors"))["vision_pos_embed_8f"]
    assert torch.equal(model.vision_encoder.pos_embed.detach(), expected)


def test_reproduces_reference_features_and_scores(model, inputs):
    exp = load_file(_fixture("expected.safetensors"))
    prompts = _prompts()
    with torch.no_grad():
        text_raw = model.text_encoder(input_ids=inputs["input_ids"],
                                      attention_mask=inputs["attention_mask"]).last_hidden_state[:, 0]
        text = model.encode_text(prompts)
        video = model.encode_video(_normalised(inputs["video"]))
        scores = model(inputs["video"], prompts)
        scores_small = model(inputs["video_small"], prompts)
    assert (text_raw - exp["text_pooled_raw"]).abs().max() < ATOL
    assert (text - exp["text_proj_raw"]).abs().max() < ATOL
    assert (video / video.norm(dim=-1, keepdim=True) - exp["video_feat"]).abs().max() < ATOL
    assert (scores - exp["scores"]).abs().max() < ATOL
    assert (scores_small - exp["scores_video_small"]).abs().max() < ATOL


def _normalised(video: torch.Tensor) -> torch.Tensor:
    from t2vturbo.rewards.preprocess import viclip_pixels

    b, t = video.shape[:2]
    return viclip_pixels(video.flatten(0, 1)).view(b, t, 3, 224, 224)


def test_gradients_reach_the_pixels(model, inputs):
    frames = inputs["video_small"].clone().requires_grad_(True)
    score = model(frames, _prompts()[:1])
    score.sum().backward()
    assert frames.grad is not None and torch.isfinite(frames.grad).all()
    assert frames.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in model.parameters())  # frozen


def test_bad_checkpoint_and_options_fail_in_one_line(tmp_path):
    state = torch.load(_fixture("internvideo2.pt"), weights_only=True)["module"]
    del state["vision_encoder.blocks.1.attn.qkv.weight"]
    broken = tmp_path / "broken.pt"
    torch.save({"module": state}, broken)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.qkv\.weight"):
        load_reward("internvideo2", checkpoint=str(broken), vocab_file=str(_fixture("bert_vocab.txt")),
                    **_small_options())
    with pytest.raises(ConfigError, match="no option"):
        load_reward("internvideo2", checkpoint=str(broken), width=3)
    with pytest.raises(MissingWeightError, match="vocab_file"):
        load_reward("internvideo2", checkpoint=str(_fixture("internvideo2.pt")),
                    vocab_file=str(tmp_path / "none.txt"), **_small_options())


def _official_full_size_shapes() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of InternVideo2-stage2_1b-224p-f4.pt (docs/formats.md §6; the fixture's naming scheme)."""
    s: dict[str, tuple[int, ...]] = {}
    v, d, mlp, t = "vision_encoder.", 1408, 6144, 1 + 4 * 256
    s.update({v + "cls_token": (1, 1, d), v + "pos_embed": (1, t, d), v + "img_pos_embed": (1, 257, d),
              v + "clip_pos_embed": (1, t, d), v + "clip_img_pos_embed": (1, 257, d),
              v + "patch_embed.proj.weight": (d, 3, 1, 14, 14), v + "patch_embed.proj.bias": (d,)})
    for i in range(40):
        b = f"{v}blocks.{i}."
        s.update({b + "norm1.weight": (d,), b + "attn.qkv.weight": (3 * d, d), b + "attn.proj.weight": (d, d),
                  b + "attn.proj.bias": (d,), b + "attn.q_norm.weight": (d,), b + "attn.k_norm.weight": (d,),
                  b + "ls1.gamma": (d,), b + "norm2.weight": (d,), b + "mlp.fc1.weight": (mlp, d),
                  b + "mlp.fc1.bias": (mlp,), b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,),
                  b + "ls2.gamma": (d,)})
    p = v + "clip_projector."
    for n in ("norm1_q", "norm1_k", "norm1_v"):
        s[f"{p}{n}.weight"] = s[f"{p}{n}.bias"] = (d,)
    for n in ("q", "k", "v"):
        s[f"{p}cross_attn.{n}_bias"], s[f"{p}cross_attn.{n}.weight"] = (d,), (d, d)
    s[p + "cross_attn.proj.weight"], s[p + "cross_attn.proj.bias"] = (768, d), (768,)
    for i in range(6):
        s.update({f"{v}clip_decoder.{i}.head.weight": (3200, d), f"{v}clip_decoder.{i}.head.bias": (3200,),
                  f"{v}clip_decoder.{i}.norm.weight": (3200,), f"{v}clip_decoder.{i}.norm.bias": (3200,)})
    s.update({v + "final_clip_decoder.head.weight": (768, 768), v + "final_clip_decoder.head.bias": (768,),
              v + "final_clip_decoder.norm.weight": (768,), v + "final_clip_decoder.norm.bias": (768,)})
    e, h = "text_encoder.bert.", 1024
    s.update({e + "embeddings.position_ids": (1, 512), e + "embeddings.word_embeddings.weight": (30522, h),
              e + "embeddings.position_embeddings.weight": (512, h), e + "embeddings.token_type_embeddings.weight": (2, h),
              e + "embeddings.LayerNorm.weight": (h,), e + "embeddings.LayerNorm.bias": (h,)})
    for i in range(24):
        b = f"{e}encoder.layer.{i}."
        kinds = ("attention", "crossattention") if i >= 19 else ("attention",)
        for kind in kinds:
            src = d if kind == "crossattention" else h  # cross-attention reads the vision tokens
            for n in ("query", "key", "value"):
                s[f"{b}{kind}.self.{n}.weight"] = (h, h if n == "query" else src)
                s[f"{b}{kind}.self.{n}.bias"] = (h,)
            s.update({f"{b}{kind}.output.dense.weight": (h, h), f"{b}{kind}.output.dense.bias": (h,),
                      f"{b}{kind}.output.LayerNorm.weight": (h,), f"{b}{kind}.output.LayerNorm.bias": (h,)})
        s.update({b + "intermediate.dense.weight": (4096, h), b + "intermediate.dense.bias": (4096,),
                  b + "output.dense.weight": (h, 4096), b + "output.dense.bias": (h,),
                  b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,)})
    s.update({"text_encoder.cls.predictions.bias": (30522,), "text_encoder.cls.predictions.decoder.weight": (30522, h),
              "vision_proj.weight": (512, 768), "vision_proj.bias": (512,), "text_proj.weight": (512, h),
              "text_proj.bias": (512,), "itm_head.weight": (2, h), "itm_head.bias": (2,), "temp": ()})
    return s


def test_full_size_official_names_and_shapes_on_meta():
    cfg = InternVideo2Config()
    with torch.device("meta"):
        model = InternVideo2(cfg)
        official = {k: torch.empty(shape) for k, shape in _official_full_size_shapes().items()}
    selected = select_official_state(official, cfg)
    check_state_dict(model, selected, "InternVideo2-stage2_1b-224p-f4.pt")  # raises on any mismatch
    assert selected["vision_encoder.pos_embed"].shape == (1, 1 + 8 * 256, 1408)
    assert len(model.text_encoder.encoder.layer) == 19
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vision_encoder."))
    assert 0.95e9 < vision < 1.1e9  # the "1B" vision tower


def test_pos_embed_interpolation_keeps_cls_and_endpoints():
    pos = torch.randn(1, 1 + 4 * 9, 5)
    out = interpolate_pos_embed(pos, 8, 9)
    assert out.shape == (1, 1 + 8 * 9, 5)
    assert torch.equal(out[:, 0], pos[:, 0])
    frames_in, frames_out = pos[0, 1:].view(4, 9, 5), out[0, 1:].view(8, 9, 5)
    assert torch.allclose(frames_out[0], frames_in[0]) and torch.allclose(frames_out[-1], frames_in[-1])
    assert torch.equal(interpolate_pos_embed(pos, 4, 9), pos)
