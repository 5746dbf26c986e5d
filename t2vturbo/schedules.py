"""Noise schedules, written once: the constants, the timestep grids, and the scheduler configs we write.

ModelScope and VideoCrafter2 share one variance-preserving DDPM schedule: 1000 timesteps, "scaled_linear" betas
0.00085 -> 0.012, epsilon prediction (docs/method.md §1). The tiny teacher uses the same betas rescaled to zero
terminal SNR, with v-prediction and "trailing" DDIM spacing (Lin et al. 2024, docs/method.md §1): its last
timestep is pure noise, so the layout of a video must come from the caption. Everything that needs a timestep
list, or turns a model output into (x0, eps), asks :class:`VPSchedule`:
- :meth:`VPSchedule.solver_grid`: the consistency-distillation solver grid, ``(1..N) * (T // N) - 1``;
- :meth:`VPSchedule.consistency_timesteps`: multistep consistency sampling, as the reference picks them;
- :meth:`VPSchedule.ddim_timesteps`: teacher DDIM sampling ("leading" spacing with offset 1, or "trailing", as
  diffusers);
- :meth:`VPSchedule.to_x0_eps` / :meth:`VPSchedule.training_target`: the prediction type, in one place;
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


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last timestep has zero signal and the first is unchanged
    (Lin et al. 2024, Algorithm 1; diffusers' ``rescale_betas_zero_snr``), computed through the betas as diffusers
    does so both give the same float32 values."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    bar = root**2
    alphas = torch.cat([bar[:1], bar[1:] / bar[:-1]])
    return torch.cumprod(alphas, dim=0)


PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing")


def alphas_cumprod_from_scheduler_config(cfg: dict) -> torch.Tensor:
    """Rebuild alphas_cumprod from a diffusers scheduler config (scaled_linear or linear betas, optionally
    rescaled to zero terminal SNR)."""
    n = int(cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))
    b0, b1 = float(cfg.get("beta_start", BETA_START)), float(cfg.get("beta_end", BETA_END))
    kind = cfg.get("beta_schedule", BETA_SCHEDULE)
    if kind == "scaled_linear":
        alphas_cumprod = scaled_linear_alphas_cumprod(n, b0, b1)
    elif kind == "linear":
        alphas_cumprod = torch.cumprod(1.0 - torch.linspace(b0, b1, n, dtype=torch.float32), dim=0)
    else:
        raise ConfigError(f"unsupported beta_schedule {kind!r} in the scheduler config; use scaled_linear or linear")
    return zero_terminal_snr(alphas_cumprod) if cfg.get("rescale_betas_zero_snr") else alphas_cumprod


def solver_grid(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The solver grid ``(1..N) * (T // N) - 1``, e.g. [19, 39, ..., 999] for N = 50."""
    c = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * c - 1


def consistency_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                          origin_steps: int = 50) -> list[int]:
    """Multistep consistency sampling timesteps as the reference picks them: 4 of 50 -> [999, 759, 519, 279]."""
    if num_steps < 1:
        raise ConfigError(f"steps must be at least 1 (got {num_steps})")
    if num_steps > num_train_timesteps // 2:
        raise ConfigError(f"{num_steps} consistency steps do not fit {num_train_timesteps} timesteps; use at most "
                          f"{origin_steps} (the solver grid)")
    origin_steps = max(origin_steps, num_steps)
    grid = solver_grid(num_train_timesteps, origin_steps).tolist()[::-1]
    stride = origin_steps // num_steps
    return grid[::stride][:num_steps]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   spacing: str = "leading") -> list[int]:
    """DDIM timesteps as diffusers' DDIMScheduler spaces them: "leading" with offset 1 (50 -> [981, ..., 1]) or
    "trailing" (50 -> [999, 979, ..., 19]; starts at the last timestep, pure noise under zero terminal SNR)."""
    if num_steps < 1:
        raise ConfigError(f"steps must be at least 1 (got {num_steps})")
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return [int(round(num_train_timesteps - i * ratio)) - 1 for i in range(num_steps)]
    if spacing != "leading":
        raise ConfigError(f"unsupported timestep_spacing {spacing!r}; use {' or '.join(TIMESTEP_SPACINGS)}")
    if num_steps >= num_train_timesteps:
        raise ConfigError(f"{num_steps} DDIM steps do not fit {num_train_timesteps} timesteps (offset 1); use at "
                          f"most {num_train_timesteps - 1}")
    ratio = num_train_timesteps // num_steps
    return [int(t) for t in (torch.arange(num_steps) * ratio + 1).flip(0)]


@dataclass
class VPSchedule:
    """A variance-preserving DDPM schedule: ``alphas_cumprod``, the betas that made it, what the model predicts."""

    alphas_cumprod: torch.Tensor
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    beta_schedule: str = BETA_SCHEDULE
    prediction_type: str = "epsilon"
    zero_snr: bool = False
    timestep_spacing: str = "leading"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config; "
                              f"use {' or '.join(PREDICTION_TYPES)}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ConfigError(f"unsupported timestep_spacing {self.timestep_spacing!r} in the scheduler config; "
                              f"use {' or '.join(TIMESTEP_SPACINGS)}")
        if self.zero_snr and self.prediction_type == "epsilon":
            raise ConfigError("a zero-terminal-SNR schedule needs prediction_type v_prediction (epsilon cannot "
                              "recover x0 from pure noise)")

    @classmethod
    def standard(cls) -> VPSchedule:
        """The ModelScope / VideoCrafter2 / tiny schedule."""
        return cls(scaled_linear_alphas_cumprod())

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> VPSchedule:
        return cls(alphas_cumprod_from_scheduler_config(cfg),
                   num_train_timesteps=int(cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)),
                   beta_start=float(cfg.get("beta_start", BETA_START)), beta_end=float(cfg.get("beta_end", BETA_END)),
                   beta_schedule=str(cfg.get("beta_schedule", BETA_SCHEDULE)),
                   prediction_type=str(cfg.get("prediction_type", "epsilon")),
                   zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
                   timestep_spacing=str(cfg.get("timestep_spacing", "leading")))

    def ddim_targets(self, timesteps: list[int]) -> list[int | None]:
        """Where each DDIM step over ``timesteps`` lands, as diffusers' DDIMScheduler computes it: ``t - T // n``
        (None below 0: the final alpha). With "leading" spacing that is the next timestep; with "trailing" it can
        be one off the next one (1000 / 3: 999 -> 666 -> 333, while the model is next called at 332). Any other
        list of timesteps steps from each to the next."""
        if list(timesteps) != self.ddim_timesteps(len(timesteps)):
            return [*timesteps[1:], None]
        ratio = self.num_train_timesteps // len(timesteps)
        return [t - ratio if t - ratio >= 0 else None for t in timesteps]

    def solver_pair(self, index: torch.Tensor, skip: int, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_start, t_end) of the teacher's solver step at solver ``index`` of ``grid``: the grid point, and
        ``skip`` timesteps lower, at least 0 (the reference's t - k, on the grid when k is a multiple of T / N)."""
        t_start = grid[index]
        return t_start, (t_start - skip).clamp(min=0)

    def to(self, device: torch.device | str) -> VPSchedule:
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device, torch.float32)[t].to(like.dtype)
        a = a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a
        return a.sqrt(), (1 - a).sqrt()

    def to_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from what the model predicts at ``t`` (docs/method.md §1): epsilon, or v = a eps - s x0.
        Computed in float32 (a half-precision output under autocast loses digits here), returned in x_t's dtype."""
        out, x = output.float(), x_t.float()
        sig, noi = self._coefficients(torch.as_tensor(t, device=x.device), x)
        if self.prediction_type == "v_prediction":
            x0, eps = sig * x - noi * out, noi * x + sig * out
        else:
            x0, eps = (x - noi * out) / sig, out
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Forward diffusion q(x_t | x0) at timesteps ``t``."""
        sig, noi = self._coefficients(torch.as_tensor(t, device=x0.device), x0)
        return sig * x0 + noi * noise

    def step(self, x0: torch.Tensor, eps: torch.Tensor, t_next: torch.Tensor | int | None) -> torch.Tensor:
        """One deterministic DDIM step (eta 0) to ``t_next``; ``None`` is the end of sampling (alphas_cumprod[0],
        diffusers' ``set_alpha_to_one=False``)."""
        from .consistency import ddim_step

        a = self.alphas_cumprod.to(x0.device, torch.float32)[0 if t_next is None else torch.as_tensor(t_next)]
        return ddim_step(x0, eps, a)

    def consistency_output(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0 (LCM's boundary scalings)."""
        from .consistency import consistency_output

        return consistency_output(x_t, x0, torch.as_tensor(t, device=x_t.device).reshape(-1))

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output at ``t`` for ``x_t = a x0 + s noise``."""
        if self.prediction_type == "v_prediction":
            sig, noi = self._coefficients(t, x0)
            return sig * noise - noi * x0
        return noise

    def solver_grid(self, num_ddim_timesteps: int = 50) -> torch.Tensor:
        return solver_grid(self.num_train_timesteps, num_ddim_timesteps)

    def consistency_timesteps(self, num_steps: int, origin_steps: int = 50) -> list[int]:
        return consistency_timesteps(num_steps, self.num_train_timesteps, origin_steps)

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        return ddim_timesteps(num_steps, self.num_train_timesteps, self.timestep_spacing)

    def describe(self) -> dict[str, Any]:
        """What a student records about the schedule it was distilled on (the zero-SNR keys only when set)."""
        out: dict[str, Any] = {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                               "beta_start": self.beta_start, "beta_end": self.beta_end}
        if self.zero_snr or self.prediction_type != "epsilon":
            out.update(prediction_type=self.prediction_type, rescale_betas_zero_snr=self.zero_snr,
                       timestep_spacing=self.timestep_spacing)
        return out

    def scheduler_config(self) -> dict[str, Any]:
        """The DDIMScheduler config of a teacher folder we write."""
        return {**DDIM_SCHEDULER_CONFIG, **self.describe()}

    def lcm_scheduler_config(self, origin_steps: int, base: dict | None = None) -> dict[str, Any]:
        """An LCMScheduler config for an exported student: this schedule (or a base folder's betas, including
        ``trained_betas``) with consistency sampling over ``origin_steps``."""
        cfg = dict(self.describe())
        if base:
            cfg.update({k: base[k] for k in (*self.describe(), "trained_betas") if base.get(k) is not None})
        cfg.update(original_inference_steps=int(origin_steps), prediction_type=self.prediction_type, timestep_scaling=10.0,
                   clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
        return cfg


def flow_sigmas(num_steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas (last 0) that diffusers' FlowMatchEulerDiscreteScheduler and
    FlowMatchLCMScheduler step through after ``set_timesteps(num_steps)``.

    As diffusers does: the shifted training sigmas give the range [shift(1/T), 1]; ``num_steps`` timesteps are
    spaced evenly over that range and then shifted once more, ``s -> shift s / (1 + (shift - 1) s)``.
    """
    if num_steps < 1:
        raise ConfigError(f"steps must be at least 1 (got {num_steps})")

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)

    import numpy as np  # the range in float32, the spacing and shift in float64, as diffusers: same bits

    ends = shifted(torch.tensor([num_train_timesteps, 1.0], dtype=torch.float32) / num_train_timesteps)
    hi, lo = (float(v) * num_train_timesteps for v in ends)
    spaced = np.linspace(hi, lo, num_steps) / num_train_timesteps
    sig = torch.from_numpy(shifted(spaced)).to(torch.float32)
    return torch.cat([sig, torch.zeros(1)])


@dataclass
class FlowSchedule:
    """A rectified-flow schedule (Wan2.1): ``x_s = (1 - s) x0 + s eps``, the model predicts ``v = eps - x0``.

    Timesteps are ``s * num_train_timesteps`` as floats (what the transformer takes), with ``shift`` applied as
    diffusers' flow-matching schedulers do (:func:`flow_sigmas`). docs/method.md §7.
    """

    shift: float = 1.0
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    prediction_type: str = "flow_prediction"

    @classmethod
    def from_scheduler_config(cls, cfg: dict) -> FlowSchedule:
        shift = cfg.get("shift", cfg.get("flow_shift", 1.0))
        if cfg.get("use_dynamic_shifting"):
            raise ConfigError("a flow scheduler with use_dynamic_shifting is not supported; set a fixed shift")
        return cls(shift=float(shift), num_train_timesteps=int(cfg.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)))

    def to(self, device: torch.device | str) -> FlowSchedule:
        return self

    def solver_pair(self, index: torch.Tensor, skip: int, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_start, t_end): the grid point at solver ``index``, and the grid point ``skip`` timesteps' worth of grid
        steps below it (``skip`` in the VP units of the recipe: 20 with N = 50 is one grid step), or 0 below the
        grid."""
        spacing = self.num_train_timesteps / len(grid)
        steps = max(1, round(skip / spacing))
        ext = torch.cat([grid.new_zeros(1), grid])
        return grid[index], ext[(index - steps + 1).clamp(min=0)]

    def sigma(self, t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(t, device=like.device, dtype=torch.float32) / self.num_train_timesteps
        return s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim else s

    def timesteps(self, num_steps: int) -> list[float]:
        """Sampling timesteps for ``num_steps`` steps (teacher Euler and student consistency steps alike)."""
        return [float(s) * self.num_train_timesteps for s in flow_sigmas(num_steps, self.shift,
                                                                            self.num_train_timesteps)[:-1]]

    def ddim_targets(self, timesteps: list[float]) -> list[float | None]:
        """Where each Euler step over ``timesteps`` lands: the next timestep, then sigma 0."""
        return [*timesteps[1:], None]

    def ddim_timesteps(self, num_steps: int) -> list[float]:
        return self.timesteps(num_steps)

    def consistency_timesteps(self, num_steps: int, origin_steps: int = 50) -> list[float]:
        """What FlowMatchLCMScheduler steps through (``origin_steps`` does not change it)."""
        return self.timesteps(num_steps)

    def solver_grid(self, num_steps: int = 50) -> torch.Tensor:
        """The distillation solver grid: the ``num_steps`` timesteps of an Euler run, decreasing sigma order
        reversed to increasing (as the VP grid), float timesteps."""
        return torch.tensor(self.timesteps(num_steps)[::-1], dtype=torch.float32)

    def to_x0_eps(self, output: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from a velocity ``v = eps - x0``: ``x0 = x - s v``, ``eps = x + (1 - s) v`` (float32 maths)."""
        v, x = output.float(), x_t.float()
        s = self.sigma(t, x)
        return (x - s * v).to(x_t.dtype), (x + (1 - s) * v).to(x_t.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        s = self.sigma(t, x0).to(x0.dtype)
        return (1 - s) * x0 + s * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def step(self, x0: torch.Tensor, eps: torch.Tensor, t_next: torch.Tensor | float | None) -> torch.Tensor:
        """One Euler step to ``t_next`` (None: to s = 0), written as ``(1 - s') x0 + s' eps``: the same point as
        ``x - (s - s') v``."""
        if t_next is None:
            return x0
        s = self.sigma(t_next, x0).to(x0.dtype)
        return (1 - s) * x0 + s * eps

    def consistency_output(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """f(x, s) = x - s v = the x0 prediction (exactly x at s = 0: no boundary scalings needed)."""
        return x0

    def describe(self) -> dict[str, Any]:
        return {"kind": "flow", "shift": self.shift, "num_train_timesteps": self.num_train_timesteps}

    def scheduler_config(self) -> dict[str, Any]:
        """A FlowMatchEulerDiscreteScheduler config (the teacher sampler t2vturbo runs)."""
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": self.num_train_timesteps,
                "shift": self.shift}

    def lcm_scheduler_config(self, origin_steps: int = 50, base: dict | None = None) -> dict[str, Any]:
        """The FlowMatchLCMScheduler config of an exported student."""
        return {"_class_name": "FlowMatchLCMScheduler", "num_train_timesteps": self.num_train_timesteps,
                "shift": self.shift}
