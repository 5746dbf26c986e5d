"""ViCLIP reproduces the reference test vector ../shared/fixtures/viclip_small (computed by the original code)."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from t2vturbo.rewards import load_reward
from t2vturbo.rewards.preprocess import resize_short_side_and_crop, viclip_pixels

# The fixture's small architecture (its README): vision width 64 / 2 layers / 4 heads, text width 32 / 2 / 4,
# embed dim 32, patch 14, 224 px, 8 frames, context 32.
SMALL = dict(vision_width=64, vision_layers=2, vision_heads=4, text_width=32, text_layers=2, text_heads=4, embed_dim=32)


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    folder = shared_path("fixtures", "viclip_small")
    reward = load_reward("viclip", checkpoint=str(folder / "viclip.pth"), **SMALL)
    return {
        "reward": reward,
        "inputs": load_file(str(folder / "inputs.safetensors")),
        "expected": load_file(str(folder / "expected.safetensors")),
        "prompts": (folder / "prompts.txt").read_text().splitlines(),
    }


def test_tokenizer_matches_reference(fixture):
    tokens = fixture["reward"].tokenize(fixture["prompts"])
    assert torch.equal(tokens.int(), fixture["inputs"]["text_tokens"])


def test_features_match_reference(fixture):
    reward, exp = fixture["reward"], fixture["expected"]
    video = fixture["inputs"]["video"].float()
    with torch.no_grad():
        raw = reward.encode_video(viclip_pixels(video.flatten(0, 1)).view(video.shape))
        text = reward.encode_text(fixture["prompts"])
    torch.testing.assert_close(raw, exp["video_feat_raw"], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), exp["video_feat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, exp["text_feat_raw"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text / text.norm(dim=-1, keepdim=True), exp["text_feat"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("video_key, scores_key", [("video", "scores"), ("video_small", "scores_video_small")])
def test_scores_match_reference(fixture, video_key, scores_key):
    # The reference scores one video against both prompts (broadcast); we score the video once per prompt.
    video = fixture["inputs"][video_key].float().expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        scores = fixture["reward"](video, fixture["prompts"])
    torch.testing.assert_close(scores, fixture["expected"][scores_key], atol=1e-5, rtol=0)


def test_resize_of_small_video_matches_reference(fixture):
    frame0 = resize_short_side_and_crop(fixture["inputs"]["video_small"].float()[0, :1])[0]
    torch.testing.assert_close(frame0, fixture["expected"]["video_small_resized_frame0"], atol=1e-5, rtol=0)
