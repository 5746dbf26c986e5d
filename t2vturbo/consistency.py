"""The consistency-distillation maths (T2V-Turbo, arXiv 2405.18750 §3; docs/method.md), written once.

Training (:mod:`t2vturbo.step`) and sampling (:mod:`t2vturbo.sampling`) both call these functions; noising and the
conversions between predictions are the schedules' (:mod:`t2vturbo.schedules`).
"""

from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def guidance_embedding(w: torch.Tensor, dim: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale (LCM eq. 13): w*1000, [sin, cos], ``dim`` wide.

    ``w`` is used as is (diffusers' LCM pipeline embeds ``w - 1``; T2V-Turbo does not).
    """
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    args = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


def boundary_scalings(t: torch.Tensor, sigma_data: float = SIGMA_DATA,
                      timestep_scaling: float = TIMESTEP_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency parameterisation (LCM eq. 9); c_skip(0) = 1, c_out(0) = 0."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    a = _bcast(alpha_bar_prev, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def consistency_output(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0 (the boundary-respecting consistency function)."""
    c_skip, c_out = boundary_scalings(t.to(x_t.device))
    return _bcast(c_skip, x_t) * x_t + _bcast(c_out, x_t) * x0


def lcm_guidance(cond: torch.Tensor, uncond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in the LCM form used by T2V-Turbo: cond + w (cond - uncond), applied to both x0
    and eps. The usual form uncond + g (cond - uncond) is this with w = g - 1 (docs/method.md §4)."""
    return cond + _bcast(w, cond) * (cond - uncond)


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    """Mean pseudo-Huber sqrt(d^2 + c^2) - c (LCM) or mean squared error."""
    d = pred.float() - target.float()
    if kind == "huber":
        return (torch.sqrt(d**2 + huber_c**2) - huber_c).mean()
    if kind == "l2":
        return (d**2).mean()
    raise ValueError(f"unknown loss kind {kind!r}; use 'huber' or 'l2'")
