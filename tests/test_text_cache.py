"""``train.cache_text``: every caption encoded once, the text encoders freed, the same numbers as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder

from t2vturbo.config import load_recipe
from t2vturbo.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
PROMPTS = ["a red circle moving left", "a cat surfing", "a red circle moving left", ""]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


def _small_rewards():
    from open_clip.model import CLIP

    from t2vturbo.rewards.clip import OpenClipReward, open_clip_config
    from t2vturbo.rewards.preprocess import hps_pixels
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig

    torch.manual_seed(0)
    clip = CLIP(**open_clip_config(model_cfg={
        "embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}))
    viclip = ViCLIP(ViCLIPConfig(vision_width=64, vision_layers=1, vision_heads=2, text_width=64, text_layers=1,
                                 text_heads=2, embed_dim=32, patch_size=32))
    for name, p in viclip.named_parameters():
        if name.endswith(("proj", "projection", "embedding")):
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    return [OpenClipReward(clip, hps_pixels).eval(), viclip.eval()]


def test_a_reward_answers_from_its_cache_with_the_same_scores_and_frees_its_text_tower():
    frames = torch.rand(4, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for model in _small_rewards():
        with torch.no_grad():
            before = model(frames, PROMPTS)
        text_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                         if n.startswith(("model.transformer", "model.token_embedding", "model.positional_embedding",
                                          "model.ln_final", "model.text_projection", "text_encoder")))
        total_before = sum(p.numel() for p in model.parameters())
        freed = model.cache_prompts(PROMPTS)
        assert freed == text_bytes > 0
        assert sum(p.numel() for p in model.parameters()) * 4 == total_before * 4 - freed  # the weights are gone
        with torch.no_grad():
            after = model(frames, PROMPTS)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)  # batched differently: rounding only
        with pytest.raises(ConfigError, match="is not in this reward's text cache"):
            model(frames[:1], ["a prompt never seen"])


def test_rewards_without_a_text_tower_are_left_as_they_are():
    from t2vturbo.rewards import load_reward

    model = load_reward("toy-image")
    assert model.cache_prompts(PROMPTS) == 0
    model(torch.rand(1, 2, 3, 16, 16), ["a prompt never seen"])  # still computes its text side


def test_distill_with_cache_text_gives_the_same_step_and_frees_the_text_encoder(clips, tmp_path):
    from t2vturbo.distill import Distiller

    def one_step(cache: bool, out: Path):
        ov = small_distill_overrides(clips, steps=1, **{"train.cache_text": cache, "train.num_threads": 1})
        d = Distiller(load_recipe(TINY, ov), out, progress=False, log=logs.append)
        d.setup()
        pixels, captions = d.stream.next_batch()
        loss, metrics = d.training_step(pixels, captions)
        return d, float(loss.detach()), metrics

    logs: list[str] = []
    plain, loss_plain, m_plain = one_step(False, tmp_path / "plain")
    cached, loss_cached, m_cached = one_step(True, tmp_path / "cached")
    assert loss_cached == pytest.approx(loss_plain, rel=1e-5)
    assert m_cached == pytest.approx(m_plain, rel=1e-5)
    assert plain.teacher.text_encoder is not None and cached.teacher.text_encoder is None
    assert any(line.startswith("text cache: ") and "MiB of text-encoder weights freed" in line for line in logs)
    with pytest.raises(ConfigError, match="is not in the teacher's text cache"):
        cached.teacher.encode_text(["a caption the data does not have"])
    assert len(cached.write_samples()) == 1  # sample.prompts are cached too: the end-of-run samples still work
