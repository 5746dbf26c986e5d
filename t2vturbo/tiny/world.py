"""The tiny text-video world: one coloured shape moving in a straight line over a plain background.

Every clip is 8 frames of 24x24 RGB in [0, 1]; its caption is ``"a {colour} {shape} moving {direction}"``.
Clips are rendered in one vectorised torch pass from a seed: the same seed always gives the same clip.
The object is anti-aliased (one-pixel soft edge) and stays fully inside the frame for all 8 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .teacher import COLOURS, DIRECTIONS, FRAMES, HEIGHT, SHAPES, WIDTH

#: RGB of each colour word (saturated, far from every background grey)
PALETTE = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.78, 0.18),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.10),
}
#: unit step (dx, dy) per direction; image rows grow downwards, so "up" is dy < 0
DIRECTION_STEPS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Ranges of the random nuisance parameters (pixels, grey level).
HALF_SIZE = (5.2, 5.8)
#: the object crosses the frame: it starts within SLACK pixels of the side it leaves and its speed is set so it
#: ends within the same distance of the opposite side. Its position along the motion axis is then (almost) a
#: function of the direction and the frame index, which a video model can learn in a CPU budget; a uniformly
#: random start makes the posterior mean at high noise a static blur, and motion was never learned that way.
SLACK = 1.5
BACKGROUND_GREY = (0.30, 0.35)
BACKGROUND_TINT = 0.01
MARGIN = 1.0
#: a motion trail: (frames behind, opacity) of fading copies of the object where it was that many frames ago
#: (empty = none). An option of the teacher-training experiments (scripts/train_tiny_teacher.py --trail): with
#: a trail the direction is visible in every single frame, as colour and shape are. The shipped world has none.
TRAIL: tuple[tuple[float, float], ...] = ()
#: (lo, hi) pixels: the object travels a distance drawn from this range, starting anywhere its path fits
#: (translation-equivariant: where it is says nothing of where it goes, only the frame-to-frame shift does).
#: None = it crosses the frame (SLACK). An option of the teacher-training experiments (--travel).
TRAVEL: tuple[float, float] | None = None
#: pixels the object's centre may sit off the frame's centre line across its motion (None = anywhere it fits).
#: An option of the teacher-training experiments: the across-motion position is what a model cannot learn from the
#: caption, so it blurs the posterior mean at high noise.
CROSS_JITTER: float | None = 1.0


@dataclass
class ClipParams:
    """Parameters of a batch of clips (all tensors have a leading batch dimension)."""

    colour: torch.Tensor  # (B,) index into COLOURS
    shape: torch.Tensor  # (B,) index into SHAPES
    direction: torch.Tensor  # (B,) index into DIRECTIONS
    half_size: torch.Tensor  # (B,) half the bounding-box side, pixels
    start: torch.Tensor  # (B, 2) centre (x, y) in frame 0, pixels
    speed: torch.Tensor  # (B,) pixels per frame
    background: torch.Tensor  # (B, 3) RGB

    def captions(self) -> list[str]:
        return [caption(COLOURS[c], SHAPES[s], DIRECTIONS[d])
                for c, s, d in zip(self.colour.tolist(), self.shape.tolist(), self.direction.tolist(), strict=True)]


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def all_captions() -> list[str]:
    """The 48 captions of the world, colour-major order."""
    return [caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def parse_caption(text: str) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, direction) named in ``text``; None for an attribute it does not name."""
    words = text.lower().replace(",", " ").replace(".", " ").split()

    def first(options):
        return next((w for w in words if w in options), None)

    return first(COLOURS), first(SHAPES), first(DIRECTIONS)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def sample_params(colour: torch.Tensor, shape: torch.Tensor, direction: torch.Tensor,
                  generator: torch.Generator) -> ClipParams:
    """Draw size, speed, start and background for given attribute indices so the object never leaves the frame."""
    n = colour.shape[0]
    half = _uniform(generator, n, *HALF_SIZE)
    slack = _uniform(generator, n, 0.0, SLACK)
    steps = torch.tensor([DIRECTION_STEPS[d] for d in DIRECTIONS])[direction]  # (B, 2)
    travel = min(WIDTH, HEIGHT) - 2 * half - 2 * MARGIN - slack  # (B,)
    if TRAVEL is not None:
        travel = torch.minimum(_uniform(generator, n, *TRAVEL), travel)
    speed = travel / (FRAMES - 1)
    size = torch.tensor([WIDTH, HEIGHT], dtype=torch.float32)
    lo = half[:, None] + MARGIN
    hi = size[None] - half[:, None] - MARGIN
    # along the motion axis the whole path must fit: shrink the start range by the travel distance
    lo = lo + torch.where(steps < 0, travel[:, None], torch.zeros_like(lo))
    hi = hi - torch.where(steps > 0, travel[:, None], torch.zeros_like(hi))
    start = lo + (hi - lo) * torch.rand(n, 2, generator=generator)
    if CROSS_JITTER is not None:  # across the motion axis: near the centre line
        centre = size[None] / 2 + CROSS_JITTER * (2 * torch.rand(n, 2, generator=generator) - 1)
        start = torch.where(steps == 0, centre, start)
    grey = _uniform(generator, n, *BACKGROUND_GREY)
    tint = (torch.rand(n, 3, generator=generator) * 2 - 1) * BACKGROUND_TINT
    background = (grey[:, None] + tint).clamp(0, 1)
    return ClipParams(colour, shape, direction, half, start, speed, background)


def render(params: ClipParams) -> torch.Tensor:
    """Render clips (B, 8, 3, 24, 24) float in [0, 1] from their parameters."""
    steps = torch.tensor([DIRECTION_STEPS[d] for d in DIRECTIONS])[params.direction]  # (B, 2)
    t = torch.arange(FRAMES, dtype=torch.float32)
    alpha = _alpha(params, steps, t)
    for behind, opacity in TRAIL:  # the trail: the object where it was some frames ago, fainter
        alpha = torch.maximum(alpha, opacity * _alpha(params, steps, t - behind))
    colour = torch.tensor([PALETTE[c] for c in COLOURS])[params.colour]  # (B, 3)
    fg = colour[:, None, :, None, None]
    bg = params.background[:, None, :, None, None]
    return bg + alpha * (fg - bg)


def render_blend(params: ClipParams, other_shape: torch.Tensor, share: torch.Tensor | float) -> torch.Tensor:
    """Clips (B, 8, 3, 24, 24) whose object is an alpha blend: ``1 - share`` of its own shape and ``share`` (a
    number or one per clip) of ``other_shape`` (B,), everything else the same. Rendering is linear in the object's
    coverage, so this is the blend of the two coverages. The tiny-image reward trains and is tested on these."""
    share = torch.as_tensor(share, dtype=torch.float32)
    if share.ndim:
        share = share[:, None, None, None, None]
    return (1 - share) * render(params) + share * render(replace(params, shape=other_shape))


def _alpha(params: ClipParams, steps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, T, 1, H, W) coverage of the object at (fractional) frame times ``t``."""
    centre = params.start[:, None] + steps[:, None] * (params.speed[:, None, None] * t[None, :, None])  # (B, T, 2)
    ys, xs = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float32) + 0.5,
                            torch.arange(WIDTH, dtype=torch.float32) + 0.5, indexing="ij")
    dx = xs - centre[..., 0, None, None]  # (B, T, H, W)
    dy = ys - centre[..., 1, None, None]
    h = params.half_size[:, None, None, None]
    # signed distance (positive inside, in pixels) of each shape
    circle = h - torch.sqrt(dx**2 + dy**2)
    square = h - torch.maximum(dx.abs(), dy.abs())
    # isosceles triangle, apex up, base at the bottom of its bounding box: fills half the box
    slope = 2.0 / math.sqrt(5.0)  # unit normal of the sides |x| = (y + h) / 2
    side = (dy + h) * (1.0 / math.sqrt(5.0)) - dx.abs() * slope
    triangle = torch.minimum(torch.minimum(side, h - dy), dy + h)
    shape = params.shape[:, None, None, None]
    dist = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    return (dist + 0.5).clamp(0, 1)[:, :, None]  # (B, T, 1, H, W)


def random_params(n: int, seed: int) -> ClipParams:
    """``n`` random clips' parameters: attributes uniform over the world, nuisances as in :func:`sample_params`."""
    gen = torch.Generator().manual_seed(int(seed))
    colour = torch.randint(len(COLOURS), (n,), generator=gen)
    shape = torch.randint(len(SHAPES), (n,), generator=gen)
    direction = torch.randint(len(DIRECTIONS), (n,), generator=gen)
    return sample_params(colour, shape, direction, gen)


def random_clips(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` random clips (n, 8, 3, 24, 24) in [0, 1] and their captions; deterministic in ``seed``."""
    params = random_params(n, seed)
    return render(params), params.captions()


def clips_for_captions(captions: list[str], seed: int) -> torch.Tensor:
    """One clip per caption (B, 8, 3, 24, 24), nuisances drawn from ``seed``."""
    parsed = [parse_caption(c) for c in captions]
    if any(None in p for p in parsed):
        bad = captions[[None in p for p in parsed].index(True)]
        raise ValueError(f"caption {bad!r} does not name a colour, shape and direction of the tiny world")
    idx = torch.tensor([(COLOURS.index(c), SHAPES.index(s), DIRECTIONS.index(d)) for c, s, d in parsed])
    gen = torch.Generator().manual_seed(int(seed))
    return render(sample_params(idx[:, 0], idx[:, 1], idx[:, 2], gen))


def render_clip(colour: str, shape: str, direction: str, seed: int = 0) -> torch.Tensor:
    """One clip (8, 3, 24, 24) in [0, 1] of a ``colour`` ``shape`` moving ``direction``."""
    return clips_for_captions([caption(colour, shape, direction)], seed)[0]
