"""VideoReward (VideoAlign): the release's input format and checkpoint layout, the vision input built in torch
equal to the Qwen2-VL processor's, gradients to the pixels and to the student (docs/vlm-rewards.md)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import REPO, shared_path

from t2vturbo.errors import CheckpointError, ConfigError, MissingWeightError, UnsafeCheckpointError
from t2vturbo.rewards import available_rewards, load_reward, reward_frame_indices
from t2vturbo.rewards.loading import check_state_dict
from t2vturbo.rewards.videoreward import (
    DIMENSIONS,
    TINY_PIXELS,
    TINY_QWEN_VL,
    VIDEO_MIN_PIXELS,
    VIDEOREWARD_MAX_PIXELS,
    VIDEOREWARD_NORMS,
    QwenVLConfig,
    VideoReward,
    prompt_format,
    qwen2vl_patches,
    reference_frame_count,
    select_qwen_vl_state,
    smart_resize,
)

CAPTIONS = ["a red circle moving right", "a blue square moving up"]


@pytest.fixture(scope="module")
def tiny() -> VideoReward:
    return load_reward("tiny-videoreward")


def _frames(b=2, t=4, h=24, w=24, seed=0) -> torch.Tensor:
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- input format


def test_scoring_prompt_is_the_release_bytes_with_its_licence():
    entry = prompt_format("videoreward_detailed_special")
    template = entry["template"]
    assert hashlib.sha256(template.encode("utf-8")).hexdigest() == entry["sha256_utf8"]
    assert len(template) == entry["chars"] == 3997
    assert "MIT License" in entry["licence_notice"] and "Kling Team, Kuaishou Technology" in entry["licence_notice"]
    assert template.count("{text_prompt}") == 1
    order = [template.index(tok) for tok in entry["reward_tokens"]]
    assert entry["reward_tokens"] == ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"] and order == sorted(order)
    assert order[1] < template.index("{text_prompt}") < order[2]  # VQ and MQ come before the caption
    shared = json.loads(shared_path("formats", "vlm_reward_prompts.json").read_text())
    assert shared["videoreward_detailed_special"]["template"] == template
    assert shared["videoreward_detailed_special"]["sha256_utf8"] == entry["sha256_utf8"]


def test_resize_and_frame_sampling_follow_the_reference():
    lo, hi = VIDEO_MIN_PIXELS, VIDEOREWARD_MAX_PIXELS
    assert smart_resize(320, 512, lo, hi) == (308, 504)
    assert smart_resize(256, 256, lo, hi) == (336, 336)
    assert smart_resize(480, 832, lo, hi) == (336, 588)
    assert smart_resize(24, 24, TINY_PIXELS, TINY_PIXELS) == (56, 56)
    # 2 frames per second of video, at least 4, even
    assert [reference_frame_count(16, fps) for fps in (8, 16, 4)] == [4, 4, 8]
    assert reference_frame_count(48, 8) == 12 and reference_frame_count(3, 8) == 2


def test_registry_samples_the_reference_frames(tiny):
    assert "videoreward" in available_rewards() and available_rewards()["tiny-videoreward"].kind == "video"
    assert reward_frame_indices(16, tiny) == [0, 5, 10, 15]  # round(linspace(0, 15, 4))
    assert reward_frame_indices(8, tiny) == [0, 2, 5, 7]
    assert reward_frame_indices(16, tiny, count=6) == [0, 3, 6, 9, 12, 15]
    assert reward_frame_indices(2, tiny) == [0, 0, 1, 1]


@pytest.mark.parametrize("size", [(308, 504), (320, 512), (64, 64), (480, 832)])
def test_torch_vision_input_equals_the_qwen2vl_processor(size):
    """The processor (transformers' Qwen2VLVideoProcessor at the release's pixel range) and ours on the same frames:
    uint8 frames already at the model's size, as the reference hands them over, give the same tensors; frames
    that still need resizing agree within float tolerance when the processor resizes floats as we do."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    proc = Qwen2VLVideoProcessor(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEOREWARD_MAX_PIXELS)
    h, w = size
    u8 = torch.randint(0, 256, (2, 4, 3, h, w), generator=torch.Generator().manual_seed(h), dtype=torch.uint8)
    frames = (u8.float() / 255).requires_grad_(True)
    ours, grid = qwen2vl_patches(frames, VIDEO_MIN_PIXELS, VIDEOREWARD_MAX_PIXELS)
    source = u8 if (h, w) == smart_resize(h, w, VIDEO_MIN_PIXELS, VIDEOREWARD_MAX_PIXELS) else u8.float()
    ref = proc(videos=list(source), return_tensors="pt", cap_pixels_per_frame=False)
    assert torch.equal(grid, ref["video_grid_thw"])
    assert ours.shape == ref["pixel_values_videos"].shape and ours.shape[1] == 3 * 2 * 14 * 14
    torch.testing.assert_close(ours.detach(), ref["pixel_values_videos"], atol=1e-5, rtol=0)
    if (h, w) == (320, 512):
        assert grid[0].tolist() == [2, 22, 36] and int(grid[0].prod()) // 4 == 396  # tokens per video
    ours.sum().backward()
    assert frames.grad is not None and bool((frames.grad.flatten(2).abs().sum(-1) > 0).all())


def test_token_ids_equal_tokenizing_the_whole_chat_turn(tiny):
    """Tokenising the pieces apart (as the reward does, to put the vision tokens in between) gives the ids of the
    rendered chat text."""
    chat, tmpl = prompt_format("qwen2_vl_chat"), prompt_format("videoreward_detailed_special")
    prompt = tmpl["template"].format(text_prompt=CAPTIONS[0])
    pads = chat["video_pad"] * 3
    text = chat["prefix"] + chat["vision_start"] + pads + chat["vision_end"] + prompt + chat["suffix"]
    whole = tiny.tokenizer.encode(text, add_special_tokens=False)
    pieces = (tiny.encode(chat["prefix"]) + [tiny.token_id(chat["vision_start"])] + [tiny.token_id(chat["video_pad"])] * 3
              + [tiny.token_id(chat["vision_end"])] + tiny.encode(prompt) + tiny.encode(chat["suffix"]))
    assert whole == pieces
    assert [tiny.token_id(t) for t in tmpl["reward_tokens"]] == [7, 8, 9]  # consecutive, in order, as added
    assert 700 < len(tiny.encode(prompt)) < 1100  # about the real model's sequence length


# ------------------------------------------------------------------------------------------- scores and gradients


def test_tiny_scores_train_and_vq_mq_are_blind_to_the_caption(tiny):
    frames = _frames().requires_grad_(True)
    score = tiny(frames, CAPTIONS)
    assert score.shape == (2,) and torch.isfinite(score).all()
    assert not any(p.requires_grad for p in tiny.parameters())
    (grad,) = torch.autograd.grad(score.sum(), frames)
    assert bool((grad.flatten(2).abs().sum(-1) > 0).all())  # every frame of every video
    with torch.no_grad():
        a = tiny.scores(frames, CAPTIONS)
        b = tiny.scores(frames, ["a yellow triangle moving left, a long caption of many more words", CAPTIONS[0]])
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-5, rtol=0)  # VQ, MQ: tokens before the caption
    assert (a[:, 2] - b[:, 2]).abs().min() > 1e-6  # TA reads it


def test_score_is_the_weighted_sum_of_normalised_dimensions(tiny):
    frames = _frames(seed=1)
    with torch.no_grad():
        raw = tiny.scores(frames, CAPTIONS)
        mean = torch.tensor([VIDEOREWARD_NORMS[k][0] for k in DIMENSIONS])
        std = torch.tensor([VIDEOREWARD_NORMS[k][1] for k in DIMENSIONS])
        z = (raw - mean) / std
        torch.testing.assert_close(tiny(frames, CAPTIONS), z.sum(1))
        mq_only = load_reward("tiny-videoreward", vq=0.0, mq=1.0, ta=0.0)
        torch.testing.assert_close(mq_only(frames, CAPTIONS), z[:, 1])
        raw_ta = load_reward("tiny-videoreward", vq=0, mq=0, ta=2.0, normalize=False)
        torch.testing.assert_close(raw_ta(frames, CAPTIONS), 2 * raw[:, 2])
    with pytest.raises(ConfigError, match="reward token"):
        tiny(frames, ["a <|TA_reward|> b", "c"])


def test_gradient_checkpointing_and_bfloat16_keep_the_score_and_its_gradient():
    frames = _frames(b=1, t=4, seed=2)
    out = {}
    for name, opts in {"plain": {}, "ckpt": {"gradient_checkpointing": True}}.items():
        model = load_reward("tiny-videoreward", **opts)
        x = frames.clone().requires_grad_(True)
        score = model(x, CAPTIONS[:1])
        (grad,) = torch.autograd.grad(score.sum(), x)
        out[name] = score.detach(), grad
    torch.testing.assert_close(out["ckpt"][0], out["plain"][0])
    torch.testing.assert_close(out["ckpt"][1], out["plain"][1])
    half = load_reward("tiny-videoreward", dtype=torch.bfloat16)
    assert half.visual.patch_embed.proj.weight.dtype == torch.bfloat16 and half.rm_head.weight.dtype == torch.float32
    assert half.model.rotary_emb.inv_freq.dtype == torch.float32
    x = frames.clone().requires_grad_(True)
    score = half(x, CAPTIONS[:1])
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert score.dtype == torch.float32 and abs(float(score.detach()) - float(out["plain"][0])) < 0.05
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- the release's layout


def _save_official_layout(model: VideoReward, root, lora_rank=4, lora_scale=2.0):
    """``model`` written as the release is: peft-wrapped keys, LoRA unmerged (base = W - scale * B @ A, so the merge
    gives W back), lm_head present, tokenizer beside the weights, model_config.json at the top."""
    g = torch.Generator().manual_seed(3)
    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if key.startswith("model.layers.") and module.endswith(("_proj",)):
            if leaf == "weight":
                a = torch.randn(lora_rank, value.shape[1], generator=g) * 0.1
                b = torch.randn(value.shape[0], lora_rank, generator=g) * 0.1
                state[f"base_model.model.{module}.base_layer.weight"] = value - lora_scale * b @ a
                state[f"base_model.model.{module}.lora_A.default.weight"] = a
                state[f"base_model.model.{module}.lora_B.default.weight"] = b
            else:
                state[f"base_model.model.{module}.base_layer.{leaf}"] = value
        else:
            state[f"base_model.model.{key}"] = value
    state["base_model.model.lm_head.weight"] = model.model.embed_tokens.weight.clone()
    step = root / "checkpoint-11352"
    step.mkdir(parents=True)
    torch.save(state, step / "model.pth")
    model.tokenizer.save_pretrained(step / "tokenizer")
    (root / "model_config.json").write_text(json.dumps({
        "data_config": {"fps": 2.0, "num_frames": None, "max_frame_pixels": TINY_PIXELS, "sample_type": "uniform",
                        "eval_dim": list(DIMENSIONS), "prompt_template_type": "detailed_special"},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": 1,
                         "reward_token": "special", "use_special_tokens": True},
        "peft_lora_config": {"lora_enable": True, "lora_r": lora_rank, "lora_alpha": lora_rank * lora_scale},
        "inference_config": {f"{k}_{s}": VIDEOREWARD_NORMS[k][i] for k in DIMENSIONS
                             for i, s in enumerate(("mean", "std"))}}))
    return step


def _tiny_arch(tiny) -> dict:
    return {**TINY_QWEN_VL, "vocab_size": tiny.cfg.vocab_size, "min_pixels": TINY_PIXELS}


def test_release_layout_loads_strictly_merges_lora_and_scores_the_same(tiny, tmp_path):
    step = _save_official_layout(tiny, tmp_path / "VideoReward")
    frames = _frames(seed=4)
    with torch.no_grad():
        expected = tiny(frames, CAPTIONS)
        for where in (tmp_path / "VideoReward", step, step / "model.pth"):
            loaded = load_reward("videoreward", checkpoint=str(where), **_tiny_arch(tiny))
            assert loaded.max_pixels == TINY_PIXELS  # from model_config.json
            assert loaded.tokenizer.convert_tokens_to_ids("<|MQ_reward|>") == 8
            torch.testing.assert_close(loaded(frames, CAPTIONS), expected, atol=1e-4, rtol=1e-4)
    state = torch.load(step / "model.pth", weights_only=True)
    del state["base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"]
    torch.save(state, step / "model.pth")
    with pytest.raises(CheckpointError, match="LoRA pair of model.layers.1.mlp.up_proj"):
        load_reward("videoreward", checkpoint=str(step), **_tiny_arch(tiny))
    del state["base_model.model.model.layers.1.mlp.up_proj.lora_A.default.weight"]
    del state["base_model.model.visual.blocks.0.attn.qkv.weight"]
    torch.save(state, step / "model.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(e\.g\. visual\.blocks\.0\.attn\.qkv\.weight"):
        load_reward("videoreward", checkpoint=str(step), **_tiny_arch(tiny))
    torch.save({"weights": torch.nn.Linear(2, 2)}, step / "model.pth")  # a pickled module: never unpickled
    with pytest.raises(UnsafeCheckpointError):
        load_reward("videoreward", checkpoint=str(step), **_tiny_arch(tiny))


def _qwen_vision_shapes(v: str, out: int) -> dict[str, tuple[int, ...]]:
    """Qwen2-VL's vision tower (32 blocks of width 1280) under the prefix ``v``, its merger projecting to ``out``."""
    s, d = {}, 1280
    s[v + "patch_embed.proj.weight"] = (d, 3, 2, 14, 14)
    for i in range(32):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            s[f"{b}{n}.weight"] = s[f"{b}{n}.bias"] = (d,)
        s.update({b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d),
                  b + "attn.proj.bias": (d,), b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                  b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    s.update({v + "merger.ln_q.weight": (d,), v + "merger.ln_q.bias": (d,), v + "merger.mlp.0.weight": (4 * d, 4 * d),
              v + "merger.mlp.0.bias": (4 * d,), v + "merger.mlp.2.weight": (out, 4 * d), v + "merger.mlp.2.bias": (out,)})
    return s


def _official_full_size_shapes() -> dict[str, tuple[int, ...]]:
    """checkpoint-11352/model.pth of the release (docs/vlm-rewards.md): Qwen2-VL-2B in transformers 4.45's module
    names under peft's ``base_model.model.``, LoRA r 64 on the text decoder's linears, 151660 embedding rows."""
    p = "base_model.model."
    s = _qwen_vision_shapes(p + "visual.", 1536)
    t, h = p + "model.", 1536
    s.update({t + "embed_tokens.weight": (151660, h), t + "norm.weight": (h,)})
    linears = {"self_attn.q_proj": (h, h, True), "self_attn.k_proj": (256, h, True), "self_attn.v_proj": (256, h, True),
               "self_attn.o_proj": (h, h, False), "mlp.gate_proj": (8960, h, False), "mlp.up_proj": (8960, h, False),
               "mlp.down_proj": (h, 8960, False)}
    for i in range(28):
        b = f"{t}layers.{i}."
        s[b + "input_layernorm.weight"] = s[b + "post_attention_layernorm.weight"] = (h,)
        for name, (out, inp, bias) in linears.items():
            s[f"{b}{name}.base_layer.weight"] = (out, inp)
            if bias:
                s[f"{b}{name}.base_layer.bias"] = (out,)
            s[f"{b}{name}.lora_A.default.weight"] = (64, inp)
            s[f"{b}{name}.lora_B.default.weight"] = (out, 64)
    s.update({p + "lm_head.weight": (151660, h), p + "rm_head.weight": (1, h)})
    return s


def test_full_size_release_keys_load_on_the_meta_device():
    with torch.device("meta"):
        model = VideoReward(QwenVLConfig())
        official = {k: torch.empty(shape) for k, shape in _official_full_size_shapes().items()}
    selected = select_qwen_vl_state(official)
    check_state_dict(model, selected, "model.pth")  # raises on any missing / unexpected key or shape
    n = sum(p.numel() for p in model.parameters())
    assert 2.1e9 < n < 2.3e9  # Qwen2-VL-2B (its lm_head is tied and dropped)
    assert model.rm_head.weight.shape == (1, 1536)


def test_missing_checkpoint_and_bad_options_are_one_line(monkeypatch, tmp_path):
    import t2vturbo.rewards.videoreward as vr

    monkeypatch.setattr(vr, "cached_hub_file", lambda repo, filename: None)  # an empty HF cache
    with pytest.raises(MissingWeightError) as err:
        load_reward("videoreward")
    msg = str(err.value)
    assert "KwaiVGI/VideoReward" in msg and "hf download" in msg and "--reward-checkpoint videoreward=PATH" in msg
    assert "\n" not in msg
    with pytest.raises(MissingWeightError, match="no VideoReward model.pth"):
        load_reward("videoreward", checkpoint=str(tmp_path))
    (tmp_path / "checkpoint-5").mkdir()
    torch.save({"x": torch.zeros(1)}, tmp_path / "checkpoint-5" / "model.pth")  # no tokenizer beside it

    def not_cached(*args, **kwargs):
        raise FileNotFoundError("not in the cache")

    monkeypatch.setattr("huggingface_hub.snapshot_download", not_cached)
    with pytest.raises(MissingWeightError) as err:
        load_reward("videoreward", checkpoint=str(tmp_path))
    assert "hf download Qwen/Qwen2-VL-2B-Instruct" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="accepted"):
        load_reward("videoreward", checkpoint=str(tmp_path), vq_weight=1.0)
    with pytest.raises(ConfigError, match="accepted"):
        load_reward("tiny-videoreward", widht=3)


def test_score_command_scores_videos_with_both_tiny_vlm_rewards(tmp_path):
    from t2vturbo_cli.main import app
    from typer.testing import CliRunner

    from t2vturbo.video import write_prompt_sidecar, write_video

    for i, caption in enumerate(CAPTIONS):
        write_video(_frames(b=1, t=16, h=32, w=48, seed=10 + i)[0], tmp_path / f"v{i}.mp4", fps=8)
        write_prompt_sidecar(tmp_path / f"v{i}.mp4", caption)
    res = CliRunner().invoke(app, ["score", str(tmp_path), "--reward", "tiny-videoreward", "--reward", "tiny-hpsv3",
                                   "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    videos = json.loads((tmp_path / "s.json").read_text())["videos"]
    assert len(videos) == 2 and all(v["frames"] == 16 for v in videos)
    for v in videos:
        assert set(v["scores"]) == {"tiny-videoreward", "tiny-hpsv3"}
        assert all(isinstance(x, float) and abs(x) < 1e3 for x in v["scores"].values())


# ------------------------------------------------------------------------------------------- in the training loop


def _tiny_recipe(extra: list[str]):
    from t2vturbo.config import load_recipe

    return load_recipe(REPO / "recipes" / "tiny.yaml",
                       ["train.batch_size=1", "sample.prompts=[]", "lora.rank=4", "video.frames=8",
                        "train.checkpoint_every=100", *extra])


def test_two_step_distillation_with_tiny_videoreward_and_tiny_hpsv3(tmp_path):
    from t2vturbo.distill import Distiller

    rewards = ("[{name: tiny-videoreward, weight: 1.0, options: {gradient_checkpointing: true}}, "
               "{name: tiny-hpsv3, weight: 0.5, frames: 2}]")
    recipe = _tiny_recipe(["train.max_steps=2", "train.reward_checkpointing=true", f"rewards={rewards}"])
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    d.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        expect = r["loss_cd"] - r["reward/tiny-videoreward"] - 0.5 * r["reward/tiny-hpsv3"]
        assert r["loss"] == pytest.approx(expect, rel=1e-5, abs=1e-6)


def test_the_reward_gradient_reaches_the_student(tmp_path):
    """The same step with the reward at weight 1 and at weight 0 (twice: the step is deterministic): the student's
    gradients differ by the reward's."""
    from t2vturbo.distill import Distiller

    grads = []
    for i, weight in enumerate((1.0, 0.0, 0.0)):
        recipe = _tiny_recipe([f"rewards=[{{name: tiny-videoreward, weight: {weight}}}]"])
        d = Distiller(recipe, tmp_path / str(i), progress=False, log=lambda m: None)
        d.setup()
        pixels, captions = d.stream.next_batch()
        torch.manual_seed(0)
        loss, metrics = d.training_step(pixels, captions)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in sorted(d.network.named_parameters())
                                if p.grad is not None]))
        assert "reward/tiny-videoreward" in metrics
    assert torch.equal(grads[1], grads[2])
    assert (grads[0] - grads[1]).abs().max() > 1e-8


# ------------------------------------------------------------------------------------------- HPSv3, the same way


def test_hpsv3_prompt_and_image_input_follow_the_release():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    from t2vturbo.rewards.hpsv3 import HPSV3_PIXELS

    entry = prompt_format("hpsv3_instruction_plus_reward_token")
    assert hashlib.sha256(entry["template"].encode("utf-8")).hexdigest() == entry["sha256_utf8"]
    assert "HPSv3 Team" in entry["licence_notice"] and entry["template"].endswith("<|Reward|>\n\nEND\n")
    proc = Qwen2VLImageProcessor(min_pixels=HPSV3_PIXELS, max_pixels=HPSV3_PIXELS)
    for h, w, grid_hw in ((448, 448, [32, 32]), (256, 256, [32, 32]), (320, 512, [26, 42])):
        u8 = torch.randint(0, 256, (2, 3, h, w), generator=torch.Generator().manual_seed(w), dtype=torch.uint8)
        ref = proc(images=list(u8 if h == w == 448 else u8.float()), return_tensors="pt")
        ours, grid = qwen2vl_patches(u8.float()[:, None] / 255, HPSV3_PIXELS, HPSV3_PIXELS)  # a frame, doubled
        assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, *grid_hw]] * 2
        torch.testing.assert_close(ours, ref["pixel_values"], atol=1e-5, rtol=0)


def test_tiny_hpsv3_scores_each_frame_and_trains():
    model = load_reward("tiny-hpsv3")
    assert model.kind == "image" and available_rewards()["hpsv3"].kind == "image"
    frames = _frames(b=2, t=3, seed=5).requires_grad_(True)
    score = model(frames, CAPTIONS)
    (grad,) = torch.autograd.grad(score.sum(), frames)
    assert score.shape == (2,) and bool((grad.flatten(2).abs().sum(-1) > 0).all())
    with torch.no_grad():
        mu = torch.stack([model.scores(frames[i].detach(), [CAPTIONS[i]] * 3)[:, 0].mean() for i in range(2)])
    torch.testing.assert_close(score.detach(), mu, atol=1e-5, rtol=1e-5)


def test_hpsv3_release_file_loads_strictly_and_scores_the_same(tmp_path):
    from safetensors.torch import save_file

    tiny = load_reward("tiny-hpsv3")
    state = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    state["lm_head.weight"] = tiny.model.embed_tokens.weight.clone()  # the 7B's own lm_head: not loaded
    save_file(state, tmp_path / "HPSv3.safetensors")
    tiny.tokenizer.save_pretrained(tmp_path / "tokenizer")
    arch = {**TINY_QWEN_VL, "vocab_size": tiny.cfg.vocab_size, "min_pixels": TINY_PIXELS, "max_pixels": TINY_PIXELS}
    loaded = load_reward("hpsv3", checkpoint=str(tmp_path), tokenizer=str(tmp_path / "tokenizer"), **arch)
    frames = _frames(b=2, t=2, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, CAPTIONS), tiny(frames, CAPTIONS), atol=1e-5, rtol=1e-5)
    assert loaded.rm_head[0].weight.dtype == torch.float32 and not loaded.training


def _official_hpsv3_shapes() -> dict[str, tuple[int, ...]]:
    """HPSv3.safetensors (docs/vlm-rewards.md): Qwen2-VL-7B in transformers 4.45's module names, 151658 rows, the
    ranknet head."""
    h = 3584
    s = _qwen_vision_shapes("visual.", h)
    s.update({"model.embed_tokens.weight": (151658, h), "model.norm.weight": (h,), "lm_head.weight": (151658, h)})
    for i in range(28):
        b = f"model.layers.{i}."
        s.update({b + "input_layernorm.weight": (h,), b + "post_attention_layernorm.weight": (h,),
                  b + "self_attn.q_proj.weight": (h, h), b + "self_attn.q_proj.bias": (h,),
                  b + "self_attn.k_proj.weight": (512, h), b + "self_attn.k_proj.bias": (512,),
                  b + "self_attn.v_proj.weight": (512, h), b + "self_attn.v_proj.bias": (512,),
                  b + "self_attn.o_proj.weight": (h, h), b + "mlp.gate_proj.weight": (18944, h),
                  b + "mlp.up_proj.weight": (18944, h), b + "mlp.down_proj.weight": (h, 18944)})
    s.update({"rm_head.0.weight": (1024, h), "rm_head.0.bias": (1024,), "rm_head.3.weight": (16, 1024),
              "rm_head.3.bias": (16,), "rm_head.5.weight": (2, 16), "rm_head.5.bias": (2,)})
    return s


def test_hpsv3_full_size_keys_on_meta_and_missing_file_is_one_line(monkeypatch):
    import t2vturbo.rewards.hpsv3 as hps

    with torch.device("meta"):
        model = hps.HPSv3()
        official = {k: torch.empty(shape) for k, shape in _official_hpsv3_shapes().items()}
    check_state_dict(model, select_qwen_vl_state(official), "HPSv3.safetensors")
    assert 7.5e9 < sum(p.numel() for p in model.parameters()) < 8.0e9  # Qwen2-VL-7B without its lm_head
    monkeypatch.setattr(hps, "cached_hub_file", lambda repo, filename: None)
    with pytest.raises(MissingWeightError) as err:
        load_reward("hpsv3")
    msg = str(err.value)
    assert "MizzenAI/HPSv3" in msg and "hf download" in msg and "--reward-checkpoint hpsv3=PATH" in msg
    assert "\n" not in msg
