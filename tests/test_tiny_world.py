"""The embedded tiny world: generator, analytic judge, shipped teacher weights and tiny rewards."""

from __future__ import annotations

import json

import pytest
import torch

from t2vturbo.tiny import teacher as tiny
from t2vturbo.tiny.judge import judge
from t2vturbo.tiny.world import (
    all_captions,
    caption,
    clips_for_captions,
    parse_caption,
    random_clips,
    random_params,
    render,
    render_clip,
)


def test_generator_is_deterministic_and_seed_dependent():
    a, caps_a = random_clips(6, seed=3)
    b, caps_b = random_clips(6, seed=3)
    c, _ = random_clips(6, seed=4)
    assert a.shape == (6, tiny.FRAMES, 3, tiny.HEIGHT, tiny.WIDTH)
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    one = render_clip("blue", "triangle", "up", seed=7)
    assert torch.equal(one, render_clip("blue", "triangle", "up", seed=7))
    assert one.shape == (tiny.FRAMES, 3, tiny.HEIGHT, tiny.WIDTH)


def test_captions_cover_the_world():
    caps = all_captions()
    assert len(caps) == len(set(caps)) == len(tiny.COLOURS) * len(tiny.SHAPES) * len(tiny.DIRECTIONS)
    assert caption("red", "circle", "left") == "a red circle moving left"
    assert parse_caption("a Yellow square moving down.") == ("yellow", "square", "down")
    assert parse_caption("a dog") == (None, None, None)
    with pytest.raises(ValueError, match="does not name"):
        clips_for_captions(["a dog running"], seed=0)


def test_object_stays_inside_the_frame_and_moves_its_way():
    params = random_params(64, seed=11)
    clips = render(params)
    diff = (clips - params.background[:, None, :, None, None]).abs().amax(dim=2)  # (B, T, H, W)
    border = torch.cat([diff[..., 0, :], diff[..., -1, :], diff[..., :, 0], diff[..., :, -1]], dim=-1)
    # at most the anti-aliased half-pixel edge grazes a border pixel: the border median stays the background
    assert float(border.max()) < 0.1, "the object touches the frame border"
    assert float(border.median()) < 1e-6
    assert bool((diff.flatten(2).amax(-1) > 0.3).all()), "every frame shows the object"


def test_a_motion_trail_is_a_fainter_copy_behind_the_object(monkeypatch):
    """world.TRAIL (a teacher-training experiment): off by default; on, each frame also shows the object where it
    was some frames before, fainter, on the side it comes from, and the judge still reads the clip."""
    import t2vturbo.tiny.world as world

    assert world.TRAIL == ()
    params = random_params(32, seed=5)
    plain = render(params)
    monkeypatch.setattr(world, "TRAIL", ((3.0, 0.5),))
    trailed = render(params)
    bg = params.background[:, None, :, None, None]
    cover = lambda clip: ((clip - bg).abs().amax(2) > 0.02).float()  # noqa: E731
    extra = (cover(trailed) - cover(plain)).clamp(min=0)
    assert torch.equal(cover(plain) * cover(trailed), cover(plain))  # the object itself is unchanged
    assert bool((extra.flatten(2).sum(-1) > 2).all())  # every frame gains trail pixels
    on_trail = extra > 0
    assert float((trailed - bg).abs().amax(2)[on_trail].max()) <= 0.5 * float((plain - bg).abs().max()) + 1e-6
    steps = torch.tensor([world.DIRECTION_STEPS[d] for d in world.DIRECTIONS])[params.direction]  # (B, 2)
    ys, xs = torch.meshgrid(torch.arange(tiny.HEIGHT) + 0.5, torch.arange(tiny.WIDTH) + 0.5, indexing="ij")
    def mean_pos(mask):
        n = mask.sum((-1, -2)).clamp(min=1)
        return torch.stack([(mask * xs).sum((-1, -2)) / n, (mask * ys).sum((-1, -2)) / n], -1)
    behind = ((mean_pos(extra) - mean_pos(cover(plain))) * steps[:, None]).sum(-1)  # along the motion
    assert bool((behind < 0).all())  # the trail lies behind
    result = judge(trailed, params.captions())
    assert result["all"] == 1.0


def test_travel_option_starts_anywhere_and_moves_the_drawn_distance(monkeypatch):
    """world.TRAVEL (a teacher-training experiment): off by default (the object crosses the frame); on, the
    distance travelled is drawn from the range, the start is spread over the frame and the path stays inside."""
    import t2vturbo.tiny.world as world

    assert world.TRAVEL is None
    crossing = random_params(256, seed=9)
    monkeypatch.setattr(world, "TRAVEL", (5.0, 8.0))
    params = random_params(256, seed=9)
    travel = params.speed * (tiny.FRAMES - 1)
    assert float(travel.min()) >= 5.0 - 1e-5 and float(travel.max()) <= 8.0 + 1e-5
    assert float((crossing.speed * (tiny.FRAMES - 1)).min()) > 8.0  # crossing travels further
    steps = torch.tensor([world.DIRECTION_STEPS[d] for d in world.DIRECTIONS])[params.direction]
    right = params.direction == world.DIRECTIONS.index("right")
    # where a right-moving object starts: near the left edge when it crosses, spread out with TRAVEL
    assert float(params.start[right, 0].std()) > 2.0 * float(crossing.start[crossing.direction == 1, 0].std())
    end = params.start + steps * travel[:, None]
    for pos in (params.start, end):
        assert bool((pos - params.half_size[:, None] >= world.MARGIN - 1e-4).all())
        assert bool((pos + params.half_size[:, None] <= tiny.WIDTH - world.MARGIN + 1e-4).all())
    assert judge(render(params), params.captions())["all"] == 1.0


def test_the_object_keeps_near_the_centre_line_across_its_motion(monkeypatch):
    """world.CROSS_JITTER: across the motion axis the centre sits within that many pixels of the frame's centre
    line (what the caption cannot say blurs the posterior at pure noise); None spreads it over the frame."""
    import t2vturbo.tiny.world as world

    assert world.CROSS_JITTER == 1.0
    params = random_params(512, seed=4)
    steps = torch.tensor([world.DIRECTION_STEPS[d] for d in world.DIRECTIONS])[params.direction]
    across = params.start[steps == 0]  # the coordinate that does not move
    assert float((across - tiny.WIDTH / 2).abs().max()) <= 1.0 + 1e-5
    assert float(across.std()) > 0.3  # jittered, not fixed
    monkeypatch.setattr(world, "CROSS_JITTER", None)
    free = random_params(512, seed=4)
    assert float(free.start[steps == 0].std()) > 2.0
    for p in (params, free):
        assert judge(render(p), p.captions())["all"] == 1.0


def test_prompt_set_is_balanced_and_distinct():
    from collections import Counter

    from t2vturbo.tiny.evaluate import prompt_set

    for n in (12, 24):
        caps = prompt_set(n)
        assert len(set(caps)) == n
        for k, options in ((1, tiny.COLOURS), (2, tiny.SHAPES), (4, tiny.DIRECTIONS)):
            counts = Counter(c.split()[k] for c in caps)
            assert set(counts) == set(options) and len(set(counts.values())) == 1, (n, counts)
    assert prompt_set(48) == all_captions()


def test_judge_reads_ground_truth_clips():
    clips, caps = random_clips(96, seed=5)
    result = judge(clips, caps)
    assert result["colour"] == result["shape"] == result["motion"] == result["all"] == 1.0
    assert len(result["per_video"]) == 96


def test_judge_notices_wrong_captions_and_static_or_empty_videos():
    clips, _ = random_clips(3, seed=1)
    caps = ["a red circle moving left", "a green square moving up", "a blue triangle moving down"]
    clips = clips_for_captions(caps, seed=2)
    wrong = ["a green circle moving left", "a green triangle moving up", "a blue triangle moving up"]
    result = judge(clips, wrong)
    assert [r["colour_ok"] for r in result["per_video"]] == [False, True, True]
    assert [r["shape_ok"] for r in result["per_video"]] == [True, False, True]
    assert [r["motion_ok"] for r in result["per_video"]] == [True, True, False]
    assert result["all"] == 0.0
    static = clips[:1, :1].expand(1, tiny.FRAMES, -1, -1, -1)  # first frame repeated: no motion
    assert judge(static, caps[:1])["per_video"][0]["direction"] is None
    blank = torch.full((1, tiny.FRAMES, 3, tiny.HEIGHT, tiny.WIDTH), 0.3)
    assert judge(blank, caps[:1])["all"] == 0.0


def test_judge_tolerates_blur_and_noise():
    clips, caps = random_clips(48, seed=9)
    flat = clips.flatten(0, 1)
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(flat, 2), scale_factor=2,
                                              mode="bilinear").reshape(clips.shape)
    noisy = (blurred + 0.04 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    result = judge(noisy, caps)
    assert result["colour"] == 1.0 and result["motion"] == 1.0
    assert result["shape"] >= 0.9  # a 2x blur of a 24 x 24 frame rounds 10-12 px objects noticeably


# --------------------------------------------------------------------------------------------- shipped weights


def test_shipped_teacher_loads_with_the_declared_architecture():
    assert (tiny.TEACHER_DIR / "unet" / "config.json").is_file(), "trained tiny teacher weights are not shipped"
    parts = tiny.load_tiny_teacher()
    for key, value in tiny.UNET_CONFIG.items():
        got = parts.unet.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(value) if isinstance(value, tuple) else value), key
    for key, value in tiny.VAE_CONFIG.items():
        got = parts.vae.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (list(value) if isinstance(value, tuple) else value), key
    for key, value in tiny.TEXT_CONFIG.items():
        assert getattr(parts.text_encoder.config, key) == value, key
    assert parts.vae_scale == pytest.approx(float(parts.vae.config.scaling_factor))
    # trained on the zero-terminal-SNR v-prediction schedule: the folder says so, and the loaded schedule follows it
    sched = json.loads((tiny.TEACHER_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert sched == tiny.ZERO_SNR_SCHEDULER_CONFIG
    assert parts.schedule.prediction_type == "v_prediction" and parts.schedule.zero_snr
    assert float(parts.schedule.alphas_cumprod[-1]) < 1e-6
    assert parts.name == "tiny"
    assert parts.dtype == torch.float32
    ids = parts.tokenizer("a red circle moving left").input_ids
    assert len(ids) == 7  # bos + one token per word + eos: every world word is a single token
    total = sum(p.stat().st_size for p in tiny.TEACHER_DIR.rglob("*") if p.is_file())
    assert total < 20 * 2**20


def test_shipped_teacher_vae_reconstructs_world_frames():
    from t2vturbo.teachers import decode_latents, encode_pixels

    parts = tiny.load_tiny_teacher()
    clips, _ = random_clips(2, seed=21)
    with torch.no_grad():
        lat = encode_pixels(parts, clips, generator=torch.Generator().manual_seed(0))
        assert lat.shape == (2, 4, tiny.FRAMES, tiny.HEIGHT // 2, tiny.WIDTH // 2)
        assert 0.5 < float(lat.std()) < 2.0  # scaling_factor brings latents near unit variance
        recon = decode_latents(parts, lat)
    assert float((recon - clips).abs().mean()) < 0.05


@pytest.fixture(scope="module")
def tiny_rewards():
    from t2vturbo.rewards import load_reward

    return load_reward("tiny-image"), load_reward("tiny-video")


def _swap(caps: list[str], which: int) -> list[str]:
    """Each caption with attribute ``which`` (0 colour, 1 shape, 2 direction) replaced by the next option."""
    options = (tiny.COLOURS, tiny.SHAPES, tiny.DIRECTIONS)[which]
    out = []
    for c in caps:
        attrs = list(parse_caption(c))
        attrs[which] = options[(options.index(attrs[which]) + 1) % len(options)]
        out.append(caption(*attrs))
    return out


def test_tiny_rewards_are_registered_with_their_kinds(tiny_rewards):
    from t2vturbo.rewards import available_rewards

    specs = available_rewards()
    assert specs["tiny-image"].kind == "image" and specs["tiny-video"].kind == "video"
    image, video = tiny_rewards
    assert image.kind == "image" and video.kind == "video" and video.num_frames == 4  # strided, as ViCLIP


def test_tiny_rewards_rank_the_true_caption_first(tiny_rewards):
    image, video = tiny_rewards
    clips, caps = random_clips(48, seed=31)
    with torch.no_grad():
        img_true = image(clips, caps)
        vid_true = video(clips, caps)
        assert float((img_true > image(clips, _swap(caps, 0))).float().mean()) >= 0.95
        assert float((img_true > image(clips, _swap(caps, 1))).float().mean()) >= 0.9
        assert float((vid_true > video(clips, _swap(caps, 2))).float().mean()) >= 0.9
        assert float((vid_true > video(clips, _swap(caps, 0))).float().mean()) >= 0.9


def test_image_reward_prefers_the_crisp_shape_to_a_blend_of_shapes(tiny_rewards):
    # The shipped tiny-image is trained with blended-shape clips as partial negatives (train_tiny_rewards.py
    # --mix, caption -> frame loss): a third of another shape blended in must lower the true caption's score, or
    # the reward's gradient accepts the faint blob a generator draws when it averages its options. The reward
    # trained without them scored the blend higher in 33% of these clips.
    from t2vturbo.tiny.world import random_params, render, render_blend

    image, _ = tiny_rewards
    params = random_params(64, seed=61)
    blend = render_blend(params, (params.shape + 1 + torch.arange(64) % 2) % len(tiny.SHAPES), 1 / 3)
    caps = params.captions()
    with torch.no_grad():
        wins = image(render(params), caps) > image(blend, caps)
    assert float(wins.float().mean()) >= 0.95


def test_image_reward_is_blind_to_motion_and_video_reward_is_not(tiny_rewards):
    image, video = tiny_rewards
    clips, caps = random_clips(16, seed=41)
    reverse = clips.flip(1)  # the same frames played backwards: the opposite direction
    with torch.no_grad():
        torch.testing.assert_close(image(reverse, caps), image(clips, caps))
        assert float((video(clips, caps) > video(reverse, caps)).float().mean()) >= 0.9


def test_tiny_rewards_are_differentiable_wrt_pixels(tiny_rewards):
    for reward in tiny_rewards:
        clips, caps = random_clips(2, seed=51)
        clips = clips.clone().requires_grad_(True)
        reward(clips, caps).sum().backward()
        assert clips.grad is not None and float(clips.grad.abs().sum()) > 0


def test_written_tokenizer_makes_every_world_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    tiny.write_tiny_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for word in tiny.WORDS:  # "green" used to split into four tokens: the merges of "red" ranked first
        assert len(tok(word).input_ids) == 3, word
    ids = tok("a green triangle moving down").input_ids
    assert len(ids) == 7 and len(set(ids)) == 7
    assert tok("a purple blob").input_ids[-1] == tok.eos_token_id  # unknown words still tokenize (as letters)


def test_render_blend_runs_from_the_clip_to_the_other_shape():
    from dataclasses import replace

    from t2vturbo.tiny.world import random_params, render, render_blend

    params = random_params(6, seed=71)
    other = (params.shape + 1) % len(tiny.SHAPES)
    torch.testing.assert_close(render_blend(params, other, 0.0), render(params))
    torch.testing.assert_close(render_blend(params, other, 1.0), render(replace(params, shape=other)))
    per_clip = render_blend(params, other, torch.tensor([0.0, 0.25, 0.5, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(per_clip[1], 0.75 * render(params)[1] + 0.25 * render(replace(params, shape=other))[1])
    torch.testing.assert_close(per_clip[0], render(params)[0])
