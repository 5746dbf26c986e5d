"""The reward training script's targets: blended-shape clips and blur doubt (docs/tiny-world.md: Rewards)."""

import pytest
import torch
from helpers import load_script

from t2vturbo.tiny.teacher import SHAPES
from t2vturbo.tiny.world import all_captions, parse_caption, random_clips


def _script():
    return load_script("train_tiny_rewards")


def test_shape_mixtures_blend_two_renders_and_split_the_shape_target():
    script = _script()
    clips, caps, dist = script.shape_mixtures(32, seed=5, mix=0.5, gen=torch.Generator().manual_seed(0))
    plain, plain_caps = random_clips(32, seed=5)
    assert caps == plain_caps  # the caption names the shape with the larger share
    torch.testing.assert_close(dist.sum(dim=1), torch.ones(32))
    own = dist[torch.arange(32), torch.tensor([SHAPES.index(parse_caption(c)[1]) for c in caps])]
    assert bool((own > 0.5 - 1e-6).all())
    blended = own < 1
    assert 4 <= int(blended.sum()) <= 28  # about half of them
    assert torch.equal(clips[~blended], plain[~blended])  # the others are the world's own clips
    assert float((clips[blended] - plain[blended]).abs().amax()) > 0.1
    none, _, dist0 = script.shape_mixtures(8, seed=5, mix=0.0, gen=torch.Generator().manual_seed(0))
    assert torch.equal(none, random_clips(8, seed=5)[0]) and bool((dist0.amax(dim=1) == 1).all())


def test_image_targets_follow_the_shape_shares_and_ignore_the_direction():
    script = _script()
    world = all_captions()
    caps = ["a red triangle moving left"]
    dist = torch.tensor([[0.25, 0.0, 0.75]])  # circle, square, triangle
    target = script.targets("image", caps, world, dist)[0]
    torch.testing.assert_close(target.sum(), torch.tensor(1.0))
    by_caption = dict(zip(world, target.tolist(), strict=True))
    for d in ("left", "right", "up", "down"):
        assert by_caption[f"a red triangle moving {d}"] == pytest.approx(0.75 / 4)
        assert by_caption[f"a red circle moving {d}"] == pytest.approx(0.25 / 4)
        assert by_caption[f"a red square moving {d}"] == 0.0
        assert by_caption[f"a blue triangle moving {d}"] == 0.0
    torch.testing.assert_close(script.targets("image", caps, world, torch.tensor([[0.0, 0.0, 1.0]])),
                               script.targets("image", caps, world))


def test_blur_doubt_moves_share_to_the_other_shapes_by_blur_factor():
    script = _script()
    dist = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    out = script.blur_doubt(dist, [1, 2, 4], 0.3)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [0.85, 0.075, 0.075], [0.7, 0.15, 0.15]]))
