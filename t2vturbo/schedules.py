"""Noise schedules, written once: the constants, the timestep grids, and the scheduler configs we write.

Today's teachers (ModelScope, VideoCrafter2, the tiny one) share one variance-preserving DDPM schedule:
1000 timesteps, "scaled_linear" betas 0.00085 -> 0.012, epsilon prediction (docs/method.md §1). Everything
that needs a timestep list asks :class:`VPSchedule`:
- :meth:`VPSchedule.solver_grid`: the consistency-distillation solver grid, ``(1..N) * (T // N) - 1``;
- :meth:`VPSchedule.consistency_timesteps`: multistep consistency sampling, as the reference picks them;
- :meth:`VPSchedule.ddim_timesteps`: teacher DDIM sampling ("leading" spacing, offset 1, as diffusers);
- :meth:`VPSchedule.scheduler_config` / :meth:`VPSchedule.lcm_scheduler_config`: what we write to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
BETA_SCHEDULE = "scaled_linear"

#: the DDIM scheduler config of ModelScope, VideoCrafter2 and the tiny teacher (epsilon, scaled_linear betas)
DDIM_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": BETA_SCHEDULE,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def scaled_linear_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                                 beta_end: float = BETA_END) -> torch.Tensor:
    """The "scaled_linear" DDPM schedule (docs/method.md §1) in float32, as diffusers computes it."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_scheduler_config(cfg: dict) -> torch.Tensor:
    """Rebuild alphas_cumprod from a diffusers scheduler config (scaled_linear or linear betas)."""
    n = int(cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))
    b0, b1 = float(cfg.get("beta_start", BETA_START)), float(cfg.get("beta_end", BETA_END))
    kind = cfg.get("beta_schedule", BETA_SCHEDULE)
    if kind == "scaled_linear":
        return scaled_linear_alphas_cumprod(n, b0, b1)
    if kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)
    raise ConfigError(f"unsupported beta_schedule {kind!r} in the scheduler config; use scaled_linear or linear")


def solver_grid(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The solver grid ``(1..N) * (T // N) - 1``, e.g. [19, 39, ..., 999] for N = 50."""
    c = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * c - 1


def consistency_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                          origin_steps: int = 50) -> list[int]:
    """Multistep consistency sampling timesteps as the reference picks them: 4 of 50 -> [999, 759, 519, 279]."""
    if num_steps < 1:
        raise ConfigError(f"steps must be at least 1 (got {num_steps})")
    origin_steps = max(origin_steps, num_steps)
    grid = solver_grid(num_train_timesteps, origin_steps).tolist()[::-1]
    stride = origin_steps // num_steps
    return grid[::stride][:num_steps]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """DDIM "leading" spacing with offset 1 (diffusers DDIMScheduler, steps_offset=1): 50 -> [981, ..., 1]."""
    if num_steps < 1:
        raise ConfigError(f"steps must be at least 1 (got {num_steps})")
    ratio = num_train_timesteps // num_steps
    return [int(t) for t in (torch.arange(num_steps) * ratio + 1).flip(0)]


@dataclass
class VPSchedule:
    """A variance-preserving DDPM schedule: ``alphas_cumprod`` and the betas that made it."""

    alphas_cumprod: torch.Tensor
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    beta_schedule: str = BETA_SCHEDULE

    @classmethod
    def standard(cls) -> VPSchedule:
        """The ModelScope / VideoCrafter2 / tiny schedule."""
        return cls(scaled_linear_alphas_cumprod())

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> VPSchedule:
        return cls(alphas_cumprod_from_scheduler_config(cfg),
                   num_train_timesteps=int(cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)),
                   beta_start=float(cfg.get("beta_start", BETA_START)), beta_end=float(cfg.get("beta_end", BETA_END)),
                   beta_schedule=str(cfg.get("beta_schedule", BETA_SCHEDULE)))

    def solver_grid(self, num_ddim_timesteps: int = 50) -> torch.Tensor:
        return solver_grid(self.num_train_timesteps, num_ddim_timesteps)

    def consistency_timesteps(self, num_steps: int, origin_steps: int = 50) -> list[int]:
        return consistency_timesteps(num_steps, self.num_train_timesteps, origin_steps)

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        return ddim_timesteps(num_steps, self.num_train_timesteps)

    def describe(self) -> dict[str, Any]:
        """What a student records about the schedule it was distilled on."""
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    def scheduler_config(self) -> dict[str, Any]:
        """The DDIMScheduler config of a teacher folder we write."""
        return {**DDIM_SCHEDULER_CONFIG, **self.describe()}

    def lcm_scheduler_config(self, origin_steps: int, base: dict | None = None) -> dict[str, Any]:
        """An LCMScheduler config for an exported student: this schedule (or a base folder's betas, including
        ``trained_betas``) with consistency sampling over ``origin_steps``."""
        cfg = dict(self.describe())
        if base:
            cfg.update({k: base[k] for k in (*self.describe(), "trained_betas") if base.get(k) is not None})
        cfg.update(original_inference_steps=int(origin_steps), prediction_type="epsilon", timestep_scaling=10.0,
                   clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
        return cfg
