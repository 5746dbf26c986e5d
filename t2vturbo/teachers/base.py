"""The Teacher protocol: everything distillation, sampling and export need from a model family, and the only door
through which the core reaches one.

A family is one module (``teachers/unet3d.py``: ModelScope, VideoCrafter2, the tiny teacher; ``teachers/wan.py``:
Wan2.1) with a subclass of :class:`Teacher`. The core never asks which family it holds and never looks inside
the network: it calls the methods below, and the family answers. ``tests/test_teacher_contract.py`` builds a
third, toy family inside the test file and runs a distillation step, sampling and export through the core
unchanged.

The student is the SAME network with a LoRA adapter and a guidance projection (:mod:`t2vturbo.student`); the
teacher is that network with the adapter disabled. Nothing copies the network, except a full fine-tune
(``train.full_finetune``): its teacher is a frozen copy, passed to :meth:`Teacher.denoise` as ``network``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .common import move_modules


class _Dropped(nn.Module):
    """Stands where a freed VAE encoder was (an empty module: code that counts its layers still runs)."""

    def __init__(self, name: str):
        super().__init__()
        self.what = name

    def forward(self, *args, **kwargs):
        raise ConfigError(f"the VAE's {self.what} was freed (training from prepared latents); this run cannot "
                          "encode videos: use data.source folder or webdataset")


class Teacher:
    """A latent text-to-video teacher (and, with an adapter, its student). Subclasses set the attributes and
    implement the methods that raise :class:`NotImplementedError` here."""

    #: what the user called it (``tiny``, a folder, a hub id); recorded as a student's base model
    name: str = "custom"
    #: the noise schedule and prediction form (:class:`t2vturbo.schedules.VPSchedule` or ``FlowSchedule``)
    schedule: Any = None
    #: the frozen modules; ``text_encoder`` is None once ``train.cache_text`` has freed it
    vae: nn.Module
    text_encoder: nn.Module | None
    tokenizer: Any = None
    #: sampling defaults stored with the model (``t2vturbo_defaults.json``: frames, fps, guidance, ...)
    stored_defaults: dict
    #: the frame rate an fps-conditioned network is fed when none is given; None: the network has no fps input
    default_fps: int | None = None
    #: pixel frames per latent frame after the first: a clip of F' latent frames decodes to (F' - 1) * this + 1
    temporal_factor: int = 1
    #: the VAE decodes a frame from every latent frame before it, so frames cannot be decoded in separate chunks
    causal_vae: bool = False
    #: how re-noising draws are laid out: frame-major (F, C, h, w) per video, as diffusers' UNet3D pipeline draws
    #: them, or (C, F, h, w) from a second generator, as WanPipeline's FlowMatchLCMScheduler does
    noise_frame_major: bool = True
    #: the state-dict path of the module that takes the student's guidance projection (a diffusers
    #: TimestepEmbedding: its ``cond_proj`` adds the projected guidance embedding to the timestep embedding)
    guidance_module: str = "time_embedding"
    #: whether ``distill.motion`` (T2V-Turbo-v2 motion guidance) can train on this family
    can_learn_motion: bool = False
    #: what the dry run says of the family: its default LoRA targets, its solver (``{n}``: the grid size)
    plan = {"lora_targets": "the family's default modules", "solver": "DDIM, N={n}"}

    # ------------------------------------------------------------------ the network
    @property
    def network(self) -> nn.Module:
        """The denoising network (UNet, transformer) that the student adapts."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    @property
    def supports_fps(self) -> bool:
        """Whether the network takes a frame-rate input (VideoCrafter2)."""
        return self.default_fps is not None

    @property
    def supports_motion(self) -> bool:
        """Whether the network carries T2V-Turbo-v2's motion-condition input (a v2 student)."""
        return False

    def guidance_embedder(self, network: nn.Module | None = None) -> nn.Module:
        """The module that holds (or will hold) the guidance projection ``cond_proj``; a DDP wrapper is looked
        through."""
        net = self.network if network is None else network
        return getattr(net, "module", net).get_submodule(self.guidance_module)

    @property
    def guidance_key(self) -> str:
        """The student-file key of the guidance projection's weight."""
        return f"{self.guidance_module}.cond_proj.weight"

    @property
    def guidance_modules(self) -> list[str]:
        """Every module that takes a guidance projection, :attr:`guidance_module` first. A family whose network
        holds several denoisers (Wan2.2-A14B's two experts) gives one per denoiser; each gets its own projection,
        all fed the same guidance embedding."""
        return [self.guidance_module]

    def guidance_embedders(self, network: nn.Module | None = None) -> list[nn.Module]:
        """The modules of :attr:`guidance_modules` (a DDP wrapper is looked through)."""
        net = self.network if network is None else network
        return [getattr(net, "module", net).get_submodule(m) for m in self.guidance_modules]

    @property
    def guidance_keys(self) -> list[str]:
        """The student-file keys of every guidance projection's weight, :attr:`guidance_key` first."""
        return [f"{m}.cond_proj.weight" for m in self.guidance_modules]

    def teacher_guidance(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The classifier-free guidance scale (LCM form, ``cond + w (cond - uncond)``) the teacher applies at
        timesteps ``t`` when asked for ``w`` (a scalar or one per sample): ``w`` itself, unless the family's stock
        pipeline guides some timesteps with another scale (Wan2.2-A14B's ``guidance_scale_2`` for its low-noise
        expert). Used by the teacher's ODE step in distillation and by teacher sampling."""
        return w

    def lora_targets(self, wanted: str | list[str] = "all") -> list[str]:
        """Names of the modules a LoRA adapter wraps: the family's default set for ``"all"``, else the modules
        named (exactly, or by a dotted suffix) in ``wanted``."""
        raise NotImplementedError

    def enable_block_checkpointing(self) -> int:
        """Activation checkpointing of the network's blocks while training; returns how many."""
        raise NotImplementedError

    def text_states_shape(self) -> tuple[int, int]:
        """(tokens, width) of the text-encoder states the network attends to (the memory plan's input)."""
        raise NotImplementedError

    def network_blocks(self) -> list[nn.Module]:
        """The network's repeated blocks (a UNet's down / mid / up blocks, a transformer's blocks): the units
        ``train.parallel: fsdp`` shards one at a time (none: the network is one unit)."""
        return []

    # ------------------------------------------------------------------ shapes
    def native_video(self) -> dict[str, int]:
        """frames, height, width, fps the model was made for."""
        raise NotImplementedError

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', h, w) of a clip's latents; a shape the model cannot take is a ConfigError naming the rule."""
        raise NotImplementedError

    def pixel_frames(self, latent_frames: int) -> int:
        """How many pixel frames ``latent_frames`` latent frames decode to."""
        return (latent_frames - 1) * self.temporal_factor + 1

    def decode_groups(self, frames: list[int], chunk: int) -> list[list[int]]:
        """``frames`` cut into groups that can be decoded (and recomputed) independently, ``chunk`` at most each
        (0: 2); a causal VAE decodes them as one group."""
        size = len(frames) if self.causal_vae else (chunk or 2)
        return [frames[i : i + size] for i in range(0, len(frames), size)]

    # ------------------------------------------------------------------ the model's maps
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder states (B, L, D) for ``prompts``, in the network's dtype."""
        raise NotImplementedError

    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [0, 1] -> latents (B, C, F', h, w) as the network takes them."""
        raise NotImplementedError

    def decode_video(self, latents: torch.Tensor, frames: list[int] | None = None, chunk: int = 0) -> torch.Tensor:
        """Latents -> pixels (B, F, 3, H, W) in [0, 1], ``(x / 2 + 0.5).clamp(0, 1)`` (differentiable);
        ``frames``: only these pixel frames; ``chunk``: at most this many frames per VAE call (0 = all)."""
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction at timestep ``t`` in the common form (x0, eps). ``guidance_cond``: a student's guidance
        embedding; ``fps``: the frame rate of an fps-conditioned network; ``network`` runs instead of the model's
        own (its DDP wrapper while distilling); ``motion_cond``: T2V-Turbo-v2's motion condition (None: none)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ T2V-Turbo-v2 motion guidance
    def add_motion_condition(self) -> nn.Module:
        """Give the student fresh, trainable motion projections that start as a no-op (``distill.motion``)."""
        raise ConfigError(f"distill.motion needs a UNet3D-family teacher (ModelScope, VideoCrafter2, tiny); "
                          f"{self.name} is not one: set distill.motion.scale=0")

    def attach_motion_condition(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """Load a student file's motion projections (``state`` without their prefix) onto the network."""
        raise CheckpointError(f"this student has motion projections, which {self.name} cannot take")

    def motion_condition_state(self) -> dict[str, torch.Tensor]:
        """The network's motion projections as a state dict ({} when it has none)."""
        return {}

    def drop_motion_condition(self) -> None:
        """Remove the motion projections (an export to a stock pipeline, which has no input for them)."""

    def record_motion_attention(self, network: nn.Module | None = None) -> contextlib.AbstractContextManager:
        """Within the block the network's temporal self-attention probabilities are recorded, differentiably, into
        the context object's ``probs`` list (MotionClone's motion representation); ``network``: a copy of the
        network to record instead (a full fine-tune's frozen teacher)."""
        raise ConfigError(f"{self.name} has no temporal attention to read motion from; set distill.motion.scale=0")

    # ------------------------------------------------------------------ student files and export
    def load_student_file(self, path: Path, kind: str) -> dict:
        """Load a student in a format of this family's own (``official`` v1 LoRA list, ``v2`` whole UNet) into
        the network; returns the sampling defaults that format implies (e.g. ``origin_steps``)."""
        raise CheckpointError(f"{path} is a {kind} T2V-Turbo student, which {self.name} cannot load; pass a "
                              "student written by `t2vturbo distill` or a peft LoRA")

    def write_pipeline(self, folder: Path, *, guidance: float, origin_steps: int, dtype: torch.dtype,
                       fps: int | None, base_spec: str) -> dict:
        """Merge the student, fold ``guidance`` (and ``fps``) into the weights and save a stock diffusers
        pipeline folder that runs it with ``guidance_scale=1``; returns what to record about it."""
        raise NotImplementedError

    def write_adapter(self, folder: Path, *, guidance: float, base_spec: str, meta: dict) -> dict:
        """Save the student's adapter in the layout the family's stock pipeline loads; returns what to record
        about it (``meta``: what the student recorded)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ housekeeping
    def modules(self) -> list[nn.Module | None]:
        """The modules ``to`` moves and ``freeze`` freezes."""
        return [self.network, self.vae, self.text_encoder]

    def freeze(self) -> Teacher:
        for m in self.modules():
            if m is not None:
                m.requires_grad_(False).eval()
        return self

    def to(self, device=None, dtype=None) -> Teacher:
        move_modules(self.modules(), device, dtype)
        if device is not None and hasattr(self.schedule, "to"):
            self.schedule.to(device)
        return self

    def release_text_encoder(self, table: dict[str, torch.Tensor]) -> int:
        """Answer ``encode_text`` from ``table`` (prompt -> states) from now on and free the text encoder;
        returns the bytes of weights freed (``train.cache_text``)."""
        from ..rewards import cached_lookup

        encoder = self.text_encoder
        freed = 0 if encoder is None else sum(p.numel() * p.element_size() for p in encoder.parameters())
        self.text_encoder = None
        self.encode_text = cached_lookup(table, "the teacher's text cache")
        return freed

    # ------------------------------------------------------------------ prepared latents (t2vturbo prepare)
    def encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (B, F, 3, H, W) in [0, 1] -> the VAE posterior's mean and standard deviation, both (B, C, F', h,
        w) in the network's latent space (scaled / normalised as :meth:`encode_video` returns latents), so that
        :meth:`sample_latents` draws what :meth:`encode_video` would (``t2vturbo prepare`` stores them)."""
        raise ConfigError(f"{self.name} cannot store VAE latents (its family has no encode_moments); train it "
                          "from videos (data.source folder or webdataset)")

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of the posterior from stored moments: the same draw, from the same random numbers, as
        :meth:`encode_video` makes from the pixels (a family whose VAE draws in another layout overrides it)."""
        where = generator.device if generator is not None else mean.device  # as diffusers' randn_tensor draws
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=where)
        return (mean + std * eps.to(mean.device)).to(self.dtype)

    def drop_vae_encoder(self) -> int:
        """Free the VAE's encoder (training from prepared latents decodes only, for the rewards); returns the
        bytes freed. Later :meth:`encode_video` calls fail."""
        freed = 0
        for name in ("encoder", "quant_conv"):
            module = getattr(self.vae, name, None)
            if isinstance(module, nn.Module):
                freed += sum(p.numel() * p.element_size() for p in module.parameters())
                setattr(self.vae, name, _Dropped(name))
        return freed

