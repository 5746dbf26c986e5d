"""What one request may ask of a loaded model, checked before it is queued: every error is a
:class:`FieldError` naming the request field (the API answers it as a 400).

Frames, height and width are bounded by the model's own default shape (its student's recorded clip, else the
model's native one) times ``Limits.scale``; steps by the schedule (a student's solver grid) and ``Limits.steps``.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass

from ..errors import ConfigError, T2VTurboError
from ..generate import LoadedModel, Settings

#: seeds are 0 .. 2**31 - 1: what every client (JavaScript numbers included) carries exactly
MAX_SEED = 2**31 - 1
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


class FieldError(T2VTurboError):
    """A request field is wrong: ``param`` names it, the message says what is allowed."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Limits:
    """What the server accepts (``t2vturbo serve`` options)."""

    #: characters in a prompt
    prompt_chars: int = 1000
    #: inference steps (also at most what the schedule allows: a student's solver grid)
    steps: int = 100
    #: frames, height and width at most this times the model's default
    scale: float = 2.0
    #: classifier-free guidance scale (or a student's guidance input)
    guidance: float = 50.0
    #: frame rate of the output (and the condition of an fps-conditioned model)
    fps: int = 60

    def caps(self, model: LoadedModel) -> dict[str, int]:
        """The largest values a request may give this model."""
        d = model.defaults
        return {"num_inference_steps": min(self.steps, model.most_steps()),
                "num_frames": max(1, math.floor(d.frames * self.scale)),
                "height": max(8, math.floor(d.height * self.scale)),
                "width": max(8, math.floor(d.width * self.scale)),
                "fps": self.fps, "prompt_chars": self.prompt_chars}


def parse_size(size: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height)."""
    m = _SIZE.match(size)
    if m is None:
        raise FieldError("size", f"size must be WIDTHxHEIGHT in pixels, e.g. 256x256 (got {size!r})")
    return int(m.group(1)), int(m.group(2))


def check_prompt(prompt: str, limits: Limits) -> str:
    text = prompt.strip()
    if not text:
        raise FieldError("prompt", "prompt is empty; describe the video to make")
    if len(text) > limits.prompt_chars:
        raise FieldError("prompt", f"prompt has {len(text)} characters; at most {limits.prompt_chars} are accepted")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise FieldError("prompt", "prompt must be one line of text (no newlines or control characters)")
    return text


def settle_request(model: LoadedModel, limits: Limits, *, steps: int | None = None, guidance: float | None = None,
                   frames: int | None = None, size: str | None = None, fps: int | None = None,
                   motion_guidance: float | None = None, motion_percentage: float | None = None) -> Settings:
    """The settings a request samples with, every option in range for ``model`` (else :class:`FieldError`)."""
    caps = limits.caps(model)
    if steps is not None and not 1 <= steps <= caps["num_inference_steps"]:
        why = " (the student's solver grid)" if caps["num_inference_steps"] == model.most_steps() else ""
        raise FieldError("num_inference_steps", f"num_inference_steps must be 1-{caps['num_inference_steps']}"
                                                f"{why} (got {steps})")
    if guidance is not None and not (math.isfinite(guidance) and 0.0 <= guidance <= limits.guidance):
        raise FieldError("guidance_scale", f"guidance_scale must be 0-{limits.guidance:g} (got {guidance})")
    if frames is not None and not 1 <= frames <= caps["num_frames"]:
        raise FieldError("num_frames", f"num_frames must be 1-{caps['num_frames']} for this model (got {frames})")
    width = height = None
    if size is not None:
        width, height = parse_size(size)
        if not (8 <= width <= caps["width"] and 8 <= height <= caps["height"]):
            raise FieldError("size", f"size must be at most {caps['width']}x{caps['height']} and at least 8x8 for "
                                     f"this model (got {width}x{height})")
    if fps is not None and not 1 <= fps <= limits.fps:
        raise FieldError("fps", f"fps must be 1-{limits.fps} (got {fps})")
    for name, value in (("motion_guidance", motion_guidance), ("motion_percentage", motion_percentage)):
        if value is None:
            continue
        if not model.supports_motion:
            raise FieldError(name, f"{name} needs a T2V-Turbo-v2 motion-guided student; this model has no motion "
                                   "input")
        top = 1.0 if name == "motion_percentage" else 10.0
        if not (math.isfinite(value) and 0.0 <= value <= top):
            raise FieldError(name, f"{name} must be 0-{top:g} (got {value})")
    try:
        settings = model.settle(steps=steps, guidance=guidance, frames=frames, height=height, width=width, fps=fps,
                                motion_guidance=motion_guidance, motion_percentage=motion_percentage)
    except ConfigError as err:
        raise FieldError("num_inference_steps" if steps is not None else None, str(err)) from None
    # the model's own shape rules (e.g. multiples of the VAE's factor), named by the field that breaks them
    d = model.defaults
    try:
        model.parts.latent_shape(d.frames, settings.height, settings.width)
    except ConfigError as err:
        raise FieldError("size", str(err)) from None
    try:
        model.parts.latent_shape(settings.frames, settings.height, settings.width)
    except ConfigError as err:
        raise FieldError("num_frames", str(err)) from None
    return settings


def check_seed(seed: int | None) -> int:
    """The request's seed, or a fresh one (recorded on the video, so it can be made again)."""
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise FieldError("seed", f"seed must be 0-{MAX_SEED} (got {seed})")
    return int(seed)
