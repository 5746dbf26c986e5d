"""The Wan2.2 family: the two-expert text-to-video model (``Wan-AI/Wan2.2-T2V-A14B-Diffusers``: a high-noise
``transformer`` and a low-noise ``transformer_2``, switched at ``boundary_ratio``) and the TI2V-5B
(``Wan-AI/Wan2.2-TI2V-5B-Diffusers``: one transformer on 48 latent channels, per-token timesteps, the Wan2.2 VAE),
both over diffusers' ``WanPipeline`` (docs/models.md "Wan2.2").

:class:`Wan22Teacher` extends the Wan2.1 :class:`~t2vturbo.teachers.wan.WanTeacher` (same flow schedule, UMT5
text, causal VAE maths):

- **Experts.** With ``transformer_2`` the network is :class:`WanExperts`, one module holding both transformers, so
  the student's peft LoRA covers both and each gets its own guidance projection (:attr:`guidance_modules`). Every
  call sends each sample to the expert stock ``WanPipeline`` uses at its timestep: ``t >= boundary_ratio x
  num_train_timesteps`` (the float32 timestep against that Python float, the pipeline's own comparison) -> the
  high-noise ``transformer``, else ``transformer_2``; a batch that mixes the two is split and re-joined. That one
  rule serves the teacher's ODE step, the consistency target, the student and both samplers, so a solver step or a
  sampling step that crosses the boundary uses the expert the pipeline would on each side.
- **Guidance.** One w per sample, shared by both experts (the student has one guidance input, folded into both on
  export). The teacher's CFG on the low-noise expert is the pipeline's ``guidance_scale_2``, tied to w: in the LCM
  form ``w_2 = r w`` with ``r = (g_2 - 1) / (g - 1)`` from the model's defaults (A14B: g = 4, g_2 = 3, r = 2/3;
  r = 1 without ``guidance_2``), so that w alone fixes the whole guided ODE the student learns to jump along.
- **TI2V-5B.** ``expand_timesteps``: the transformer takes one timestep per latent token, laid out as the pipeline
  does (``(mask[0][0][:, ::2, ::2] * t).flatten()``, text-to-video: every token at t); the 48-channel VAE
  (patchified 2 x 2, residual up/down blocks, 16 x 16 spatial, per-channel mean / std) and its causal partial decode
  go through the Wan2.1 code paths, which read the VAE's own scale factors.

``tiny-wan22`` (two experts) and ``tiny-wan22-5b`` are built in code at diffusers' test sizes (its
tests/pipelines/wan/test_wan_22.py), with random weights and the tiny world's tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MissingWeightError
from ..schedules import FlowSchedule
from .common import DEFAULTS_FILE, load_folder
from .wan import (
    TINY_WAN_DEFAULTS,
    TINY_WAN_SHIFT,
    TINY_WAN_TEXT,
    TINY_WAN_TRANSFORMER,
    TINY_WAN_VAE,
    WAN_LORA_FILE,
    WAN_LORA_PATTERN,
    WanTeacher,
    guidance_input,
    wan_lora_state,
)

WAN22_A14B_HUB_ID = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
WAN22_5B_HUB_ID = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
#: the model cards' defaults: A14B 720p, 81 frames at 16 fps, guidance 4.0 (high-noise) / 3.0 (low-noise), 40
#: steps; TI2V-5B 704 x 1280, 121 frames at 24 fps, guidance 5.0, 50 steps (guidance in the form uncond + g (c - u))
WAN22_A14B_DEFAULTS = {"frames": 81, "height": 720, "width": 1280, "fps": 16, "guidance": 4.0, "guidance_2": 3.0}
WAN22_5B_DEFAULTS = {"frames": 121, "height": 704, "width": 1280, "fps": 24, "guidance": 5.0}
#: the second expert's LoRA file (``pipe.load_lora_weights(DIR, weight_name=..., load_into_transformer_2=True)``);
#: the first is :data:`~t2vturbo.teachers.wan.WAN_LORA_FILE`, the name ``load_lora_weights(DIR)`` reads by default
WAN22_LORA_FILE_2 = "pytorch_lora_weights_transformer_2.safetensors"
#: where a Wan transformer takes the guidance embedding (its time embedder, a diffusers TimestepEmbedding)
TIME_EMBEDDER = "condition_embedder.time_embedder"

#: tiny-wan22: two experts at diffusers' test sizes (the tiny Wan's transformer twice, other seeds)
TINY_WAN22_BOUNDARY = 0.875
TINY_WAN22_DEFAULTS = {**TINY_WAN_DEFAULTS, "guidance_2": 4.0}
#: tiny-wan22-5b: diffusers' Wan2.2 5B test sizes (48 latent channels; the residual, patchified VAE) with a
#: per-channel latent mean / std that is not the identity, so that the normalisation is exercised
TINY_WAN22_5B_TRANSFORMER = {**TINY_WAN_TRANSFORMER, "in_channels": 48, "out_channels": 48}
TINY_WAN22_5B_VAE = dict(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                         dim_mult=[1, 1, 1, 1], num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                         temperal_downsample=[False, True, True],
                         latents_mean=[round(0.05 * (i % 9 - 4), 2) for i in range(48)],
                         latents_std=[round(0.6 + 0.1 * (i % 7), 2) for i in range(48)])
TINY_WAN22_5B_SHIFT = 5.0
TINY_WAN22_5B_DEFAULTS = {"frames": 9, "height": 64, "width": 64, "fps": 24, "guidance": 5.0}


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def high_noise(t: torch.Tensor | float, boundary: float) -> torch.Tensor:
    """Which samples WanPipeline gives the high-noise ``transformer``: ``t >= boundary_ratio * num_train_timesteps``,
    the float32 timestep compared with that Python float (torch casts the float to float32, as in the pipeline's
    loop); ``t`` is (B,) or (B, tokens), the same t on every token."""
    t = torch.as_tensor(t).to(torch.float32)
    return (t if t.ndim < 2 else t[:, 0]) >= boundary


class WanExperts(nn.Module):
    """Wan2.2-A14B's two experts as one module: the student's LoRA (and its DDP wrapper) covers both.

    ``forward`` takes a diffusers transformer's arguments plus the student's guidance embedding and sends each
    sample to its expert (:func:`high_noise`). While a graph is built, the trainable parameters of an expert no
    sample used are added to the output times zero: every rank's backward then reaches all trainable parameters
    (DDP needs that, and every process steps both experts' optimiser states alike).
    """

    def __init__(self, transformer: nn.Module, transformer_2: nn.Module, boundary: float):
        super().__init__()
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary = float(boundary)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                guidance_cond: torch.Tensor | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        if hidden_states.device.type == "meta":  # no values to route by (the memory plan): the experts are alike
            groups = [(self.transformer, None), (self.transformer_2, False)]
        else:
            high = high_noise(timestep, self.boundary).to(hidden_states.device)
            groups = [(self.transformer, high), (self.transformer_2, ~high)]
        out, unused = None, []
        for expert, rows in groups:
            if rows is False or (rows is not None and not bool(rows.any())):
                unused.append(expert)
                continue
            whole = rows is None or bool(rows.all())
            idx = None if whole else rows.nonzero().squeeze(1)

            def pick(z, idx=idx):
                return z if idx is None or z is None else z[idx]

            with guidance_input(expert.get_submodule(TIME_EMBEDDER), pick(guidance_cond)):
                y = expert(hidden_states=pick(hidden_states), timestep=pick(timestep),
                           encoder_hidden_states=pick(encoder_hidden_states), return_dict=False)[0]
            if whole:
                out = y
            else:
                base = out if out is not None else y.new_zeros((hidden_states.shape[0], *y.shape[1:]))
                out = base.index_copy(0, idx, y)
        if torch.is_grad_enabled():  # (FSDP's sharded DTensor parameters are left alone)
            touch = [p.reshape(-1)[:1] for e in unused for p in e.parameters()
                     if p.requires_grad and not _is_dtensor(p)]
            if touch:
                out = out + (torch.cat([t.float() for t in touch]).sum() * 0.0).to(out.dtype)
        return (out,)


@dataclass
class Wan22Teacher(WanTeacher):
    """A Wan2.2 teacher: A14B (``transformer_2`` and ``boundary_ratio`` set) or TI2V-5B (``expand_timesteps``)."""

    #: the low-noise expert (A14B); None: one transformer (TI2V-5B)
    transformer_2: nn.Module | None = None
    #: the pipeline's ``boundary_ratio``: timesteps >= ratio x num_train_timesteps go to the high-noise expert
    boundary_ratio: float | None = None
    #: the pipeline's ``expand_timesteps`` (TI2V-5B): one timestep per latent token
    expand_timesteps: bool = False
    name: str = "wan2.2"

    plan = {"lora_targets": "every block's attention and FFN linears of each expert (a guidance projection each)",
            "solver": "Euler on the flow velocity (docs/method.md §7), N={n} shifted sigmas; each timestep on the "
                      "expert stock WanPipeline uses there"}

    def __post_init__(self):
        self.experts = None
        if self.transformer_2 is not None:
            if self.boundary_ratio is None:
                raise ConfigError("a Wan2.2 folder with transformer_2 needs boundary_ratio in its model_index.json")
            self.experts = WanExperts(self.transformer, self.transformer_2, self.boundary)
            self.guidance_module = f"transformer.{TIME_EMBEDDER}"

    @property
    def network(self) -> nn.Module:
        return self.experts if self.experts is not None else self.transformer

    @property
    def boundary(self) -> float:
        """``boundary_ratio x num_train_timesteps`` as the pipeline computes it (a Python float)."""
        total = self.schedule.num_train_timesteps if self.schedule is not None else 1000
        return self.boundary_ratio * total if self.boundary_ratio is not None else float("-inf")

    @property
    def guidance_modules(self) -> list[str]:
        if self.experts is None:
            return [self.guidance_module]
        return [f"transformer.{TIME_EMBEDDER}", f"transformer_2.{TIME_EMBEDDER}"]

    @property
    def guidance_2_ratio(self) -> float:
        """r in ``w_2 = r w`` (LCM form): the low-noise expert's CFG per unit of the high-noise one's, from the
        model's defaults ``guidance`` g and ``guidance_2`` g_2 (pipeline form): ``(g_2 - 1) / (g - 1)``; 1 without
        ``guidance_2`` (the pipeline's default ``guidance_scale_2 = guidance_scale``)."""
        g, g2 = self.stored_defaults.get("guidance"), self.stored_defaults.get("guidance_2")
        if self.experts is None or g is None or g2 is None or float(g) == 1.0:
            return 1.0
        return (float(g2) - 1.0) / (float(g) - 1.0)

    def guidance_scale_2(self, guidance_scale: float) -> float:
        """The stock pipeline's ``guidance_scale_2`` that goes with ``guidance_scale`` here: 1 + r (g - 1)."""
        return 1.0 + self.guidance_2_ratio * (float(guidance_scale) - 1.0)

    def expert_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """The expert each timestep goes to: 0 (``transformer``, high noise) or 1 (``transformer_2``)."""
        return (~high_noise(t, self.boundary)).long()

    def teacher_guidance(self, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """w on the high-noise expert's timesteps, ``r w`` on the low-noise one's (the pipeline's
        ``guidance_scale_2``; :attr:`guidance_2_ratio`)."""
        r = self.guidance_2_ratio
        if r == 1.0:
            return w
        w = torch.as_tensor(w, dtype=torch.float32, device=t.device)
        return torch.where(high_noise(t, self.boundary).to(t.device), w, w * r)

    def lora_targets(self, wanted: str | list[str] = "all") -> list[str]:
        """Both experts' attention and FFN linears (``"all"``), or any Linear named in ``wanted`` (a dotted suffix
        such as ``to_q`` names it in both experts; ``transformer_2.blocks.0.ffn.net.2`` one module)."""
        if self.experts is None:
            return super().lora_targets(wanted)
        from ..student import match_module_names

        linears = [n for n, m in self.experts.named_modules() if type(m) is nn.Linear and not n.endswith("cond_proj")]
        if wanted == "all":
            return [n for n in linears if re.match(WAN_LORA_PATTERN, n.split(".", 1)[1])]
        return match_module_names(linears, wanted)

    def network_blocks(self) -> list[nn.Module]:
        return [b for tr in self._transformers() for b in tr.blocks]

    def enable_block_checkpointing(self) -> int:
        for tr in self._transformers():
            tr.enable_gradient_checkpointing()
        return len(self.network_blocks())

    def _transformers(self) -> list[nn.Module]:
        return [self.transformer] + ([self.transformer_2] if self.transformer_2 is not None else [])

    # ------------------------------------------------------------------ the Teacher protocol
    def timestep_input(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the transformer is given as ``timestep``: ``t`` (B,), or with ``expand_timesteps`` (TI2V-5B) one
        per latent token, (B, F' x ceil(h / 2) x ceil(w / 2)), the layout of WanPipeline's
        ``(mask[0][0][:, ::2, ::2] * t).flatten()`` (text-to-video: every token at the sample's t)."""
        t = torch.as_tensor(t, device=x.device)
        if not self.expand_timesteps:
            return t
        f, h, w = x.shape[2:]
        tokens = f * ((h + 1) // 2) * ((w + 1) // 2)
        return t.to(torch.float32).reshape(-1, 1).expand(x.shape[0], tokens)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_cond: torch.Tensor | None = None,
                fps: torch.Tensor | int | None = None, network: nn.Module | None = None,
                motion_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the velocity at latents ``x`` (B, C, F', h, w) and float timesteps ``t`` (B,), each sample
        on its expert (A14B); ``guidance_cond``: a student's guidance embedding, fed to the expert each sample
        uses."""
        if motion_cond is not None:
            raise ConfigError("a Wan2.2 transformer has no motion condition (T2V-Turbo-v2 motion guidance is for "
                              "VideoCrafter2 / UNet3D students); leave out --motion-guidance")
        net = network if network is not None else self.network
        t = torch.as_tensor(t, device=x.device)
        timestep = self.timestep_input(t, x)
        if self.experts is None:
            with guidance_input(self.guidance_embedder(), guidance_cond):
                v = net(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        else:
            v = net(hidden_states=x, timestep=timestep, encoder_hidden_states=text, guidance_cond=guidance_cond)[0]
        return self.schedule.to_x0_eps(v, x, t)

    # ------------------------------------------------------------------ export
    def _pipeline(self, scheduler):
        from diffusers import WanPipeline

        return WanPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae, scheduler=scheduler,
                           transformer=self.transformer, transformer_2=self.transformer_2,
                           boundary_ratio=self.boundary_ratio, expand_timesteps=self.expand_timesteps)

    def write_pipeline(self, folder: Path, *, guidance: float, origin_steps: int, dtype: torch.dtype,
                       fps: int | None, base_spec: str) -> dict:
        """Merge the LoRA into both experts, fold ``guidance`` into each expert's time embedder and save a stock
        ``WanPipeline`` (``transformer_2`` + ``boundary_ratio``, ``expand_timesteps``) with
        ``FlowMatchLCMScheduler``: run it with ``num_inference_steps=4, guidance_scale=1.0``."""
        from diffusers import FlowMatchLCMScheduler

        from ..student import fold_guidance, lora_layers, merge_lora

        if lora_layers(self.network):  # a fully fine-tuned student has whole weights: nothing to merge
            merge_lora(self.network)
        for embedder in self.guidance_embedders():
            fold_guidance(embedder, guidance)
        pipe = self._pipeline(FlowMatchLCMScheduler.from_config(self.schedule.lcm_scheduler_config()))
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
        (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(self.stored_defaults, indent=1))
        return {"fps_folded": None, "boundary_ratio": self.boundary_ratio, "how_to_run": (
            "run it with: torch.manual_seed(SEED); WanPipeline.from_pretrained(DIR)(prompt, num_inference_steps=4, "
            "guidance_scale=1.0)  (its FlowMatchLCMScheduler re-noises from torch's global generator; the "
            "pipeline switches experts at boundary_ratio as the student did)")}

    def write_adapter(self, folder: Path, *, guidance: float, base_spec: str, meta: dict) -> dict:
        """One LoRA file per expert, each in the layout ``WanPipeline.load_lora_weights`` reads (keys under
        ``transformer.``; guidance folded as a bias on its own time embedder, :func:`wan_lora_state`): the
        high-noise expert's as ``pytorch_lora_weights.safetensors``, the low-noise one's as
        :data:`WAN22_LORA_FILE_2`, loaded with ``load_into_transformer_2=True``."""
        if self.experts is None:
            return super().write_adapter(folder, guidance=guidance, base_spec=base_spec, meta=meta)
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        for expert, file in ((self.transformer, WAN_LORA_FILE), (self.transformer_2, WAN22_LORA_FILE_2)):
            state = wan_lora_state(expert, TIME_EMBEDDER, guidance)
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / file))
        shift = self.schedule.lcm_scheduler_config().get("shift")
        load = (f"pipe.load_lora_weights(DIR); pipe.load_lora_weights(DIR, weight_name='{WAN22_LORA_FILE_2}', "
                f"load_into_transformer_2=True); pipe.scheduler = FlowMatchLCMScheduler(shift={shift})")
        return {"guidance_folded": float(guidance), "files": [WAN_LORA_FILE, WAN22_LORA_FILE_2], "run_with": {
            "guidance_scale": 1.0, "scheduler": self.schedule.lcm_scheduler_config(), "load": load},
            "how_to_run": f"load it with: {load}; then num_inference_steps=4, guidance_scale=1.0"}


# ---------------------------------------------------------------------------------------------- building / loading
def _tiny_text(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                     **TINY_WAN_TEXT)
    return UMT5EncoderModel(cfg)


def _frozen(*modules: nn.Module | None) -> None:
    for m in modules:
        if m is not None:
            m.eval().requires_grad_(False)


def build_tiny_wan22(seed: int = 0) -> Wan22Teacher:
    """``tiny-wan22``: two experts (diffusers' test sizes, random weights, different draws), the tiny Wan's VAE and
    text encoder, boundary 0.875, guidance 5.0 / 4.0."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from ..tiny.teacher import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_WAN_TRANSFORMER)
        transformer_2 = WanTransformer3DModel(**TINY_WAN_TRANSFORMER)
        vae = AutoencoderKLWan(**TINY_WAN_VAE)
        text_encoder = _tiny_text(tokenizer)
    _frozen(transformer, transformer_2, vae, text_encoder)
    return Wan22Teacher(transformer=transformer, transformer_2=transformer_2, boundary_ratio=TINY_WAN22_BOUNDARY,
                        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        schedule=FlowSchedule(shift=TINY_WAN_SHIFT), name="tiny-wan22",
                        stored_defaults=dict(TINY_WAN22_DEFAULTS))


def build_tiny_wan22_5b(seed: int = 0) -> Wan22Teacher:
    """``tiny-wan22-5b``: diffusers' Wan2.2 5B test sizes (48 latent channels, the residual patchified VAE),
    per-token timesteps, random weights."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from ..tiny.teacher import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_WAN22_5B_TRANSFORMER)
        vae = AutoencoderKLWan(**TINY_WAN22_5B_VAE)
        text_encoder = _tiny_text(tokenizer)
    _frozen(transformer, vae, text_encoder)
    return Wan22Teacher(transformer=transformer, expand_timesteps=True, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, schedule=FlowSchedule(shift=TINY_WAN22_5B_SHIFT), name="tiny-wan22-5b",
                        stored_defaults=dict(TINY_WAN22_5B_DEFAULTS))


def read_model_index(root: Path) -> dict:
    """A diffusers folder's model_index.json ({} when absent or unreadable)."""
    try:
        return json.loads((root / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _has_component(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def is_wan22_folder(root: Path) -> bool:
    """Whether a diffusers folder holds a Wan2.2 pipeline: a WanPipeline with a ``transformer_2``, a
    ``boundary_ratio`` or ``expand_timesteps`` (a Wan2.1 folder saved by diffusers records them as null / false)."""
    index = read_model_index(root)
    if "Wan" not in str(index.get("_class_name", "")):
        return False
    return (_has_component(index, "transformer_2") or index.get("boundary_ratio") is not None
            or bool(index.get("expand_timesteps")))


def is_wan22_spec(spec: str) -> bool:
    """Whether a teacher spec names a Wan2.2 model: a Wan2.2 folder, or a hub id with "wan2.2" in it."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return is_wan22_folder(p)
    return not p.exists() and "/" in spec and re.search(r"wan2[._]?2", spec.lower()) is not None


def _is_5b(spec: str, index: dict) -> bool:
    return bool(index.get("expand_timesteps")) or (not index and "5b" in spec.lower())


def load_wan22_teacher(spec: str, text_encoder: bool = True) -> Wan22Teacher:
    """Load a Wan2.2 diffusers folder or a hub id in the local cache: transformer/ (+ transformer_2/ for A14B),
    vae/, text_encoder/, tokenizer/, scheduler/ and model_index.json (``boundary_ratio``, ``expand_timesteps``)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    from ..hub import resolve_pretrained_dir

    hub = WAN22_5B_HUB_ID if "5b" in spec.lower() else WAN22_A14B_HUB_ID
    how = f"model.teacher (distill) or --model (sample, export), e.g. {hub}"
    get = f"get it with `hf download {hub} --local-dir DIR`"
    root = Path(resolve_pretrained_dir(spec, "transformer/ vae/ text_encoder/ tokenizer/ scheduler/", how))
    index = read_model_index(root)
    try:
        tcfg = json.loads((root / "transformer" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        tcfg = {}
    if tcfg.get("image_dim") is not None or int(tcfg.get("in_channels", 16)) not in (16, 48):
        raise ConfigError(f"{spec} is an image-to-video Wan2.2 (its transformer takes image latents); t2vturbo "
                          f"distils the text-to-video ones: {WAN22_A14B_HUB_ID} or {WAN22_5B_HUB_ID}")
    two = _has_component(index, "transformer_2") or (root / "transformer_2").is_dir()
    classes = {"transformer": WanTransformer3DModel, "vae": AutoencoderKLWan, "text_encoder": UMT5EncoderModel,
               "tokenizer": AutoTokenizer}
    if two:
        classes["transformer_2"] = WanTransformer3DModel
        if index.get("boundary_ratio") is None:
            raise MissingWeightError(f"{root} has a transformer_2/ but its model_index.json no boundary_ratio; "
                                     f"{get}")
    folder = load_folder(str(root), classes, "a Wan2.2 folder", how, get, "cannot load the Wan2.2 model",
                         skip=() if text_encoder else ("text_encoder",))
    m = folder.modules
    defaults = WAN22_5B_DEFAULTS if _is_5b(spec, index) and not two else WAN22_A14B_DEFAULTS
    return Wan22Teacher(transformer=m["transformer"], transformer_2=m.get("transformer_2"),
                        boundary_ratio=index.get("boundary_ratio"), expand_timesteps=bool(index.get("expand_timesteps")),
                        vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=m["tokenizer"],
                        schedule=FlowSchedule.from_scheduler_config(folder.scheduler_config), name=str(spec),
                        stored_defaults={**defaults, **folder.stored_defaults})


def save_wan22_teacher(teacher: Wan22Teacher, folder: Path) -> Path:
    """Write ``teacher`` as a stock WanPipeline folder (both experts, ``boundary_ratio``, ``expand_timesteps``)
    with the Euler flow scheduler t2vturbo samples with, and its defaults."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = teacher._pipeline(FlowMatchEulerDiscreteScheduler.from_config(teacher.schedule.scheduler_config()))
    pipe.save_pretrained(folder, safe_serialization=True)
    (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(teacher.stored_defaults, indent=1))
    return Path(folder)


def describe_wan22(spec: str) -> dict[str, str]:
    """What the dry run says of a Wan2.2 spec (decided from the name or the folder's model_index.json, no
    weights): LoRA targets, solver, and the folders the teacher is read from."""
    p = Path(spec).expanduser()
    index = read_model_index(p) if p.is_dir() else {}
    five = spec == "tiny-wan22-5b" or (spec != "tiny-wan22" and _is_5b(spec, index)
                                       and not _has_component(index, "transformer_2"))
    if five:
        return {"lora_targets": "every block's attention and FFN linears (one transformer, 48 latent channels)",
                "solver": "Euler on the flow velocity (docs/method.md §7), N={n} shifted sigmas; one timestep per "
                          "latent token, as WanPipeline's expand_timesteps",
                "files": "model_index.json scheduler/ text_encoder/ tokenizer/ transformer/ vae/ (the Wan2.2 VAE, "
                         "48 channels)"}
    return {"lora_targets": "every block's attention and FFN linears of both experts (transformer, transformer_2; "
                            "a guidance projection each)",
            "solver": "Euler on the flow velocity (docs/method.md §7), N={n} shifted sigmas; timesteps >= "
                      "boundary_ratio x 1000 on the high-noise expert, the rest on transformer_2, as WanPipeline",
            "files": "model_index.json (boundary_ratio) scheduler/ text_encoder/ tokenizer/ transformer/ "
                     "transformer_2/ vae/"}
