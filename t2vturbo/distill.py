"""The T2V-Turbo recipe: consistency distillation + mixed reward feedback (paper Algorithm 1, docs/method.md).

``Distiller(recipe, output_dir).run()`` does setup -> train -> save. Everything runs the same on one CPU,
one GPU or several processes (``accelerate launch`` / ``torchrun``): accelerate wraps the student for DDP,
each rank reads its own shard, and only the main process writes files.

Why one file of ~550 lines: this is the recipe, read top to bottom as setup / step / train / save with numbered
steps (as torchtune's recipes are); the maths it calls is in :mod:`t2vturbo.consistency`, the parts in
:mod:`t2vturbo.teachers`, :mod:`t2vturbo.student` and :mod:`t2vturbo.rewards`. Splitting it would scatter one
training step over several files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .config import Recipe, dump_recipe
from .consistency import (
    consistency_loss,
    guidance_embedding,
    lcm_guidance,
)
from .data import make_stream, mix_seed
from .errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from .names import torch_dtype
from .rewards import RewardModel, cached_lookup, load_reward, prompt_table, strided_frame_indices
from .safeio import atomic_path
from .schedules import VPSchedule
from .student import (
    LoraSettings,
    dropout_off,
    enable_block_checkpointing,
    make_student,
    save_student,
    split_dropouts,
    student_state_dict,
    trainable_parameters,
)
from .teachers import TeacherParts, load_teacher
from .train_state import (
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere). Freed weights of a few
    MB each come from the heap once glibc's mmap threshold has grown, and stay resident without it: at mid size,
    of the 484 MiB of reward text towers that ``train.cache_text`` frees, 168 MiB left the process without the
    trim and 465 MiB with it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): the allocator keeps its own counsel
        pass


def describe_plan(recipe: Recipe) -> list[str]:
    """Human-readable plan of a run (for --dry-run): what will be loaded and what each step does."""
    from .teachers.wan import is_wan_spec

    d, v, t, lo = recipe.distill, recipe.video, recipe.train, recipe.lora
    wan = is_wan_spec(recipe.model.teacher)
    targets = ("every block's attention and FFN linears" if wan else "every Linear/Conv") \
        if lo.target_modules == "all" else lo.target_modules
    solver = (f"Euler on the flow velocity (docs/method.md §7), N={d.num_ddim_timesteps} shifted sigmas"
              if wan else f"DDIM, N={d.num_ddim_timesteps}")
    lines = [
        f"teacher      {recipe.model.teacher} ({recipe.model.dtype}, device {recipe.model.device})",
        f"student      LoRA rank {lo.rank} alpha {lo.alpha or lo.rank} dropout {lo.dropout} on "
        f"{targets} + guidance projection "
        f"({d.guidance_embed_dim}-d w embedding)",
        f"video        {v.frames} frames {v.height}x{v.width} @ {v.fps} fps",
        f"solver       {solver}, skip k={d.skip}, w ~ U[{d.w_min}, {d.w_max}], "
        f"{d.loss} loss" + (f" (c={d.huber_c})" if d.loss == "huber" else "") + f", {d.target} target",
        f"training     {t.max_steps} steps, batch {t.batch_size}/process, lr {t.learning_rate}, {t.optimizer}, "
        f"grad clip {t.grad_clip}, precision {t.mixed_precision}, seed {t.seed}",
        *([f"motion       T2V-Turbo-v2 motion guidance: scale {d.motion.scale} on solver indices >= "
           f"{(1 - d.motion.percentage) * d.num_ddim_timesteps:g} (the clip DDIM-inverted to each, temporal-attention "
           f"prior x {d.motion.loss_scale:g}); the student learns motion_cond_proj + combine_proj"]
          if d.motion.scale > 0 else []),
        f"checkpoints  every {t.checkpoint_every} steps, keep {t.keep_checkpoints}",
        f"data         {recipe.data.source}" + (f" from {recipe.data.path}" if recipe.data.path else ""),
    ]
    if recipe.rewards:
        for r in recipe.rewards:
            from .rewards import reward_spec

            spec = reward_spec(r.name)
            frames = r.frames or ("6 random" if spec.kind == "image" else "model's")
            lines.append(f"reward       {r.name} ({spec.kind}) beta {r.weight}, frames {frames}"
                         + (f", checkpoint {r.checkpoint}" if r.checkpoint else ""))
    else:
        lines.append("reward       none (plain consistency distillation)")
    lines.append("loss         L_cd - sum(beta * R) on the single-step student prediction")
    return lines


class Distiller:
    """One distillation run: ``setup()``, ``train()``, ``save_final()`` (``run()`` does all three)."""

    def __init__(self, recipe: Recipe, output_dir: str | Path, resume: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True, explicit: tuple[str, ...] = ()):
        self.recipe = recipe
        #: dotted keys given as overrides on this command line (a resume may change train.max_steps only so)
        self.explicit = tuple(explicit)
        self.out = Path(output_dir)
        self.resume = resume
        self.log = log
        self.show_progress = progress
        self.step = 0
        self.nonfinite_in_a_row = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        r = self.recipe
        if r.model.dtype != "float32" and r.train.mixed_precision == "no":
            raise ConfigError(f"model.dtype {r.model.dtype} needs train.mixed_precision "
                              f"{'bf16' if r.model.dtype == 'bfloat16' else 'fp16'} (the LoRA weights train in fp32)")
        if r.train.num_threads:
            torch.set_num_threads(r.train.num_threads)
        cpu = r.model.device == "cpu" or (r.model.device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=cpu, mixed_precision=r.train.mixed_precision)
        self.device = self.acc.device
        self.is_main = self.acc.is_main_process
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        set_seed(r.train.seed)
        if self.is_main:
            self._prepare_output_dir()
        self.acc.wait_for_everyone()

        # 1. Teacher parts; the student is the same UNet with an adapter (no second copy).
        parts = load_teacher(r.model.teacher, device=self.device, dtype=torch_dtype(r.model.dtype, "model.dtype"))
        self.parts: TeacherParts = parts
        lora = LoraSettings(rank=r.lora.rank, alpha=r.lora.alpha, dropout=r.lora.dropout,
                            target_modules=r.lora.target_modules)
        torch.manual_seed(r.train.seed)  # LoRA A init depends on the seed, identical on every rank
        make_student(parts.unet, lora, r.distill.guidance_embed_dim)
        self.motion = r.distill.motion if r.distill.motion.scale > 0 else None
        if self.motion is not None:  # T2V-Turbo-v2: the student learns the motion guidance scale as an input
            from .teachers.motion import add_motion_condition, temporal_attention_layers

            if not hasattr(parts.unet, "up_blocks") or not isinstance(parts.schedule, VPSchedule):
                raise ConfigError("distill.motion needs a UNet3D-family teacher (ModelScope, VideoCrafter2, tiny); "
                                  f"{r.model.teacher} is not one: set distill.motion.scale=0")
            temporal_attention_layers(parts.unet)
            if getattr(parts.unet, "motion_condition", None) is None:
                add_motion_condition(parts.unet)
            parts.unet.motion_condition.requires_grad_(True)
        for p in trainable_parameters(parts.unet):
            p.data = p.data.float()  # trainable weights stay fp32 even over a bf16 base
        if r.train.gradient_checkpointing:
            enable_block_checkpointing(parts.unet)
        parts.unet.train()
        # The frozen base model's dropout (diffusers' temporal convs carry Dropout(0.1)) is never active: the
        # teacher's ODE step and the target must be deterministic functions of their inputs. Only the LoRA
        # dropout is, and only in the student's forward.
        self.base_dropouts, self.lora_dropouts = split_dropouts(parts.unet)

        # 2. Rewards (frozen), every configured reward on every rank.
        self.rewards: list[tuple[Any, RewardModel]] = []
        for rc in r.rewards:
            model = load_reward(rc.name, checkpoint=rc.checkpoint, device=self.device,
                                dtype=torch_dtype(rc.dtype, f"rewards[{rc.name}].dtype"), **rc.options)
            self.rewards.append((rc, model))

        # 3. Optimizer over the LoRA + guidance projection only.
        params = trainable_parameters(parts.unet)
        if r.train.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ConfigError("train.optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes) "
                                  "on CUDA; or set train.optimizer=adamw") from None
            opt_cls = bnb.optim.AdamW8bit
        else:
            opt_cls = torch.optim.AdamW
        self.optimizer = opt_cls(params, lr=r.train.learning_rate, weight_decay=r.train.weight_decay,
                                 eps=r.train.adam_eps)
        warm = r.train.lr_warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
        self.unet = parts.unet
        self.ddp_unet, self.optimizer = self.acc.prepare(parts.unet, self.optimizer)

        # 4. EMA target (option): a copy of the trainable tensors only.
        self.ema: dict[str, torch.Tensor] | None = None
        if r.distill.target == "ema":
            self.ema = {n: p.detach().clone() for n, p in self.unet.named_parameters() if p.requires_grad}

        # 5. Schedule, unconditional embedding, data.
        self.schedule = parts.schedule
        if r.distill.num_train_timesteps != self.schedule.num_train_timesteps:
            raise ConfigError(f"distill.num_train_timesteps is {r.distill.num_train_timesteps} but the teacher's "
                              f"schedule has {self.schedule.num_train_timesteps}; set it to match")
        self.solver_t = self.schedule.solver_grid(r.distill.num_ddim_timesteps).to(self.device)
        self.uncond = parts.encode_text([""])
        self.fps = torch.tensor([r.video.fps], device=self.device) if parts.default_fps is not None else None
        self.stream = make_stream(r, self.rank, self.world, log=self.log)
        if r.train.cache_text:
            self.cache_text(self.stream.captions())
        self.ckpt_root = self.out / "checkpoints"
        if self.resume:
            self._resume()

    def cache_text(self, captions: list[str]) -> int:
        """``train.cache_text``: encode ``captions`` (plus sample.prompts and the empty prompt) with the teacher's
        text encoder and each reward's text tower once, then free those weights; the teacher's ``encode_text`` and
        the rewards' text methods answer from the cache from then on (the same tensors they would compute).
        Returns the bytes of weights freed."""
        parts = self.parts
        prompts = list(dict.fromkeys([*captions, *self.recipe.sample.prompts, ""]))
        table = prompt_table(parts.encode_text, prompts)
        freed = sum(p.numel() * p.element_size() for p in parts.text_encoder.parameters())
        parts.text_encoder = None
        parts.encode_text = cached_lookup(table, "the teacher's text cache")
        for _, model in self.rewards:
            freed += model.cache_prompts(prompts)
        _return_freed_memory()
        self.log(f"text cache: {len(prompts)} prompts encoded once; {freed / 2**20:.0f} MiB of text-encoder "
                 "weights freed")
        return freed

    def _prepare_output_dir(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        probe = self.out / ".write-test"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"output folder {self.out} is not writable ({err.strerror}); choose another "
                              "--output-dir") from None
        if not self.resume and list_checkpoints(self.out / "checkpoints"):
            raise ConfigError(f"{self.out} already holds checkpoints of a run; pass --resume to continue it "
                              "or choose another --output-dir")
        saved = self.out / "config.yaml"
        if self.resume and saved.is_file() and list_checkpoints(self.out / "checkpoints"):
            import yaml

            from .config import recipe_changes

            changed = recipe_changes(yaml.safe_load(saved.read_text()) or {}, self.recipe, self.explicit)
            if changed:
                raise ConfigError(f"--resume with a recipe that differs from the run's config.yaml in "
                                  f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}; resume with the "
                                  f"same recipe and overrides (only train.max_steps and the like may change: pass "
                                  f"train.max_steps=N to extend), or start a new --output-dir")
        dump_recipe(self.recipe, self.out / "config.yaml")

    def _resume(self) -> None:
        found = list_checkpoints(self.ckpt_root)
        if not found:
            self.log(f"no checkpoint under {self.ckpt_root}; starting from step 0")
            return
        state = None
        for _step, folder in reversed(found):
            try:
                state = load_checkpoint(folder)
                break
            except CheckpointError as err:  # a damaged newest checkpoint: fall back to the one before
                self.log(f"checkpoint {folder.name} is unusable ({err}); trying an earlier one")
        if state is None:
            raise CheckpointError(f"no usable checkpoint under {self.ckpt_root}; start again without --resume")
        trainable = dict((n, p) for n, p in self.unet.named_parameters() if p.requires_grad)
        missing = [n for n in trainable if n not in state["student"]]
        if missing:
            raise ConfigError(f"checkpoint {folder} does not match this recipe's student (missing {missing[0]}); "
                              "resume with the recipe the run started with")
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["student"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema"):
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.stream.load_state_dict(state["data"][str(self.rank)] if str(self.rank) in state["data"] else state["data"]["0"])
        rng = state.get("rng", {}).get(str(self.rank))
        if rng is not None:
            set_rng_state(rng)
        self.step = int(state["step"])
        if self.is_main:
            self._truncate_metrics(self.step)
        self.log(f"resumed from {folder} at step {self.step}")

    # ------------------------------------------------------------------ one step
    def _seed_step(self) -> torch.Generator:
        """Every random draw of a step comes from (seed, step, rank): a resumed run replays it exactly."""
        s = mix_seed(self.recipe.train.seed, self.step, self.rank)
        torch.manual_seed(s)  # LoRA dropout uses the global generator
        random.seed(s)
        return torch.Generator().manual_seed(s)

    def training_step(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        _r, d = self.recipe, self.recipe.distill
        parts, dev = self.parts, self.device
        gen = self._seed_step()
        b = pixels.shape[0]

        # 1. Encode the clip and the captions (frozen).
        with torch.no_grad():
            latents = parts.encode_video(pixels.to(dev))
            cond = parts.encode_text(captions)
            uncond = self.uncond.expand(b, -1, -1)

        # 2. Sample a solver index, its timestep pair, the noise and w ~ U[w_min, w_max].
        index = torch.randint(0, d.num_ddim_timesteps, (b,), generator=gen).to(dev)
        t_start = self.solver_t[index]
        t_end = self.schedule.solver_end(t_start, d.skip, self.solver_t)
        noise = torch.randn(latents.shape, generator=gen).to(dev, latents.dtype)
        x_t = self.schedule.add_noise(latents, noise, t_start)
        w = d.w_min + (d.w_max - d.w_min) * torch.rand((b,), generator=gen)
        w_emb = guidance_embedding(w, d.guidance_embed_dim).to(dev, latents.dtype)
        fps = self.fps.expand(b) if self.fps is not None else None
        w_dev = w.to(dev)
        motion = self._motion_inputs(index, latents)

        x_prev, target = self.teacher_and_target(x_t, t_start, t_end, cond, uncond, w_dev, w_emb, fps, motion)
        m_emb = motion["m_emb"] if motion else None

        metrics: dict[str, float] = {}
        split = bool(self.rewards) and self.recipe.train.split_reward_backward and torch.is_grad_enabled()
        if split:  # 6 before 5: the rewards' gradient on a graph-free prediction, then the student's graph
            reward_grad, rewards_total, reward_vals = self._reward_gradient(x_t, t_start, cond, w_emb, fps,
                                                                            captions, gen, m_emb)

        # 5. Student's single-step prediction (with grad) at t_start, through the DDP wrapper.
        with self.acc.autocast():
            x0_s, _ = parts.denoise(x_t, t_start, cond, guidance_cond=w_emb, fps=fps, network=self.ddp_unet,
                                    motion_cond=m_emb)
        pred = self.schedule.consistency_output(x_t.float(), x0_s.float(), t_start)
        loss_cd = consistency_loss(pred, target, d.loss, d.huber_c)

        # 6. Mixed reward feedback on the decoded single-step prediction (no sampling chain: bounded memory).
        loss = loss_cd
        if split:
            # value cd - sum(beta R); gradient d cd + (dR/dpred) . dpred, the chain rule through the same pred
            linear = (pred * reward_grad).sum()
            loss = loss - (rewards_total + linear - linear.detach())
            metrics.update(reward_vals)
        elif self.rewards:
            rewards_total, reward_vals = self._reward_terms(pred, captions, gen)
            loss = loss - rewards_total
            metrics.update(reward_vals)
        metrics["loss_cd"] = float(loss_cd.detach())
        if motion and "energy" in motion:
            metrics["motion_energy"] = motion["energy"]
        return loss, metrics

    def _motion_inputs(self, index: torch.Tensor, latents: torch.Tensor) -> dict | None:
        """``distill.motion``: each sample's motion guidance scale (``scale`` at solver indices >= (1 -
        percentage) N, else 0, as the reference) and its embedding for the student; None when off."""
        if self.motion is None:
            return None
        n = self.recipe.distill.num_ddim_timesteps
        active = index >= (1 - self.motion.percentage) * n
        scale = active.float() * self.motion.scale
        m_emb = guidance_embedding(scale.cpu(), self.recipe.distill.guidance_embed_dim).to(self.device, latents.dtype)
        return {"active": active, "scale": scale, "m_emb": m_emb, "index": index, "latents": latents}

    @torch.no_grad()
    def teacher_and_target(self, x_t, t_start, t_end, cond, uncond, w, w_emb, fps, motion: dict | None = None):
        """Steps 3-4 of a training step, with no dropout anywhere: (x at t_end by the teacher's guided DDIM step,
        the consistency target there). Deterministic: the same inputs give the same outputs.

        ``motion`` (from :meth:`_motion_inputs`): the samples it marks active get T2V-Turbo-v2's motion-prior
        guidance on the teacher's noise estimate (:mod:`t2vturbo.motion_prior`), and the target sees the
        student's motion embedding."""
        from .student import teacher_mode

        parts = self.parts
        for m in self.base_dropouts:  # whatever called .train() on the UNet since setup
            m.eval()
        with dropout_off(self.lora_dropouts):
            # 3. Teacher (adapter off, no guidance embedding): cond and uncond in ONE batched forward,
            #    CFG in the LCM form on x0 and eps, then one DDIM step t_start -> t_end.
            with teacher_mode(self.unet), self.acc.autocast():
                x0_cu, eps_cu = parts.denoise(torch.cat([x_t, x_t]), torch.cat([t_start, t_start]),
                                              torch.cat([cond, uncond]),
                                              fps=None if fps is None else torch.cat([fps, fps]))
            x0_c, x0_u = x0_cu.float().chunk(2)
            eps_c, eps_u = eps_cu.float().chunk(2)
            x0_g, eps_g = lcm_guidance(x0_c, x0_u, w), lcm_guidance(eps_c, eps_u, w)
            if motion is not None and bool(motion["active"].any()):
                eps_g = self._motion_guided(eps_g, x_t, t_start, cond, fps, motion)
            x_prev = self.schedule.step(x0_g, eps_g, t_end).to(x_t.dtype)

            # 4. Target: the consistency function at (x_prev, t_end) from the online student (or its EMA).
            with self._ema_weights(), self.acc.autocast():
                x0_tgt, _ = parts.denoise(x_prev, t_end, cond, guidance_cond=w_emb, fps=fps,
                                          motion_cond=None if motion is None else motion["m_emb"])
            target = self.schedule.consistency_output(x_prev.float(), x0_tgt.float(), t_end)
        return x_prev, target

    def _motion_guided(self, eps_g, x_t, t_start, cond, fps, motion: dict) -> torch.Tensor:
        """The teacher's guided noise with the motion prior on the active samples (the caller holds the adapter
        off and dropout off): the clip inverted to t_start, the temporal-attention energy's gradient at x_t."""
        from .motion_prior import guided_noise, invert_latents, motion_prior_score
        from .student import teacher_mode

        act = motion["active"].nonzero().flatten()
        sub_fps = None if fps is None else fps[act]
        with teacher_mode(self.unet), self.acc.autocast():
            reference = invert_latents(self.parts, motion["latents"][act], motion["index"][act], self.solver_t,
                                       cond[act], sub_fps)
            score, _, _, energy = motion_prior_score(self.parts, x_t[act], t_start[act], reference, cond[act],
                                                     sub_fps, self.motion.loss_scale)
        motion["energy"] = float(energy) / len(act)
        abar = self.schedule.alphas_cumprod.to(eps_g.device)[t_start[act]]
        eps_g = eps_g.clone()
        eps_g[act] = guided_noise(eps_g[act], score, motion["scale"][act], abar)
        return eps_g

    def _reward_gradient(self, x_t, t_start, cond, w_emb, fps, captions, gen, m_emb=None):
        """``train.split_reward_backward``: (d sum(beta R) / d pred, sum(beta R), per-reward means) from the
        student's prediction computed without a graph. The reward branch's activations are then freed before the
        student's graph is built, so the step's peak holds one of the two, not both; the cost is one more student
        forward without grad. Its dropout masks are drawn from a forked RNG, so the forward with grad that
        follows draws the same ones and predicts the same ``pred``."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.acc.autocast():
            x0, _ = self.parts.denoise(x_t, t_start, cond, guidance_cond=w_emb, fps=fps, network=self.unet,
                                       motion_cond=m_emb)
        pred = self.schedule.consistency_output(x_t.float(), x0.float(), t_start).detach().requires_grad_(True)
        del x0
        total, vals = self._reward_terms(pred, captions, gen)
        (grad,) = torch.autograd.grad(total, pred)
        return grad, total.detach(), vals

    def _reward_terms(self, pred: torch.Tensor, captions: list[str], gen: torch.Generator):
        """Decode only the frames the rewards need, once; return sum(beta * R) and the per-reward means."""
        f = (pred.shape[2] - 1) * getattr(self.parts, "temporal_factor", 1) + 1  # pixel frames (Wan: 1 + 4k)
        wanted: dict[int, list[int]] = {}
        for i, (rc, model) in enumerate(self.rewards):
            if model.kind == "image":
                m = min(rc.frames or 6, f)
                wanted[i] = sorted(torch.randperm(f, generator=gen)[:m].tolist())
            else:
                wanted[i] = strided_frame_indices(f, rc.frames or model.num_frames or f)
        union = sorted({j for idx in wanted.values() for j in idx})
        t = self.recipe.train
        graph = torch.is_grad_enabled() and pred.requires_grad
        recompute = t.reward_checkpointing and graph
        pixels = self._decode_for_rewards(pred.to(self.parts.dtype), union,
                                          recompute or (t.decode_checkpointing and graph))
        pos = {j: k for k, j in enumerate(union)}
        total = pred.new_zeros(())
        vals = {}
        for i, (rc, model) in enumerate(self.rewards):
            frames = pixels[:, [pos[j] for j in wanted[i]]].float()
            if recompute:  # keep no reward-model activations: its forward runs again, alone, in the backward
                score = checkpoint(model, frames, captions, use_reentrant=False).float().mean()
            else:
                score = model(frames, captions).float().mean()
            total = total + rc.weight * score
            vals[f"reward/{rc.name}"] = float(score.detach())
        return total, vals

    def _decode_for_rewards(self, latents: torch.Tensor, frames: list[int], recompute: bool) -> torch.Tensor:
        """Decode ``frames`` of the prediction for the rewards. With ``recompute`` (``train.reward_checkpointing``
        while a graph is built) the decoder's activations are not kept: each chunk (``train.decode_chunk`` frames,
        default 2) is decoded again in the backward pass, so the reward branch holds only pixels (and each reward
        model's forward is checkpointed too, in ``_reward_terms``). A causal video VAE (Wan) is one chunk: its
        frames depend on every latent frame before them."""
        t = self.recipe.train
        if not recompute:
            return self.parts.decode_video(latents, frames=frames, chunk=t.decode_chunk)
        size = len(frames) if getattr(self.parts, "temporal_factor", 1) > 1 else (t.decode_chunk or 2)
        groups = [frames[i : i + size] for i in range(0, len(frames), size)]
        return torch.cat([checkpoint(self.parts.decode_video, latents, group, use_reentrant=False)
                          for group in groups], dim=1)

    def _ema_weights(self):
        """Within the block the trainable weights are the EMA copy (no-op for the online target)."""
        if self.ema is None:
            return contextlib.nullcontext()
        distiller = self

        class _Swap:
            def __enter__(self):
                self.saved = {}
                for n, p in distiller.unet.named_parameters():
                    if n in distiller.ema:
                        self.saved[n] = p.data
                        p.data = distiller.ema[n]

            def __exit__(self, *a):
                for n, p in distiller.unet.named_parameters():
                    if n in self.saved:
                        p.data = self.saved[n]
                return False

        return _Swap()

    # ------------------------------------------------------------------ loop
    def _catch_stop_signals(self) -> dict:
        """Ctrl-C / SIGTERM set a flag the loop reads between steps (a second Ctrl-C stops at once)."""
        import signal
        import threading

        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _interrupted(self, save: bool = True) -> TrainingInterrupted:
        """Save a checkpoint at the current step, between two steps (one process; with several the last periodic
        one stands; ``save=False`` after a hard stop mid-step, whose state is not a step's end)."""
        done = {step for step, _ in list_checkpoints(self.ckpt_root)}
        if save and self.world == 1 and self.step > 0 and self.step not in done:
            self.save_checkpoint()
        found = list_checkpoints(self.ckpt_root)
        where = str(found[-1][1]) if found else None
        saved = f"checkpoint {where} (step {found[-1][0]})" if found else "no checkpoint yet (step 0)"
        return TrainingInterrupted(f"{self._stop_signal or 'interrupted'} at step {self.step}: {saved}; run the same "
                                   "command with --resume to go on", where, self.step)

    def _log_line(self, row: dict, seconds: list[float]) -> None:
        """One plain line (no terminal needed): step, loss, rewards, s/step, ETA."""
        r = self.recipe
        per = sum(seconds[-20:]) / max(1, len(seconds[-20:]))
        eta = per * (r.train.max_steps - self.step)
        rewards = " ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in row.items() if k.startswith("reward/"))
        self.log(f"step {self.step}/{r.train.max_steps} loss {row['loss']:.4f} loss_cd {row.get('loss_cd', 0):.4f}"
                 + (f" {rewards}" if rewards else "") + f" {per:.2f} s/step ETA {int(eta // 60)}m{int(eta % 60):02d}s")

    def apply_gradients(self, loss: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor | None:
        """One optimiser update from a training step's loss: backward, gradient clipping, the optimiser and lr
        schedule steps, the EMA target's update. Returns the gradient norm before clipping (None unclipped)."""
        r = self.recipe
        if params is None:
            params = trainable_parameters(self.unet)
        self.acc.backward(loss)
        grad_norm = self.acc.clip_grad_norm_(params, r.train.grad_clip) if r.train.grad_clip > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.unet.named_parameters():
                    if n in self.ema:
                        self.ema[n].lerp_(p.detach(), 1 - r.distill.ema_decay)
        return grad_norm

    def train(self) -> None:
        r = self.recipe
        params = trainable_parameters(self.unet)
        progress = self._progress()
        task = progress.add_task("distill", total=r.train.max_steps, completed=self.step) if progress else None
        log_every = max(1, min(50, r.train.max_steps // 20))
        seconds: list[float] = []
        old_handlers = self._catch_stop_signals()
        try:
            if progress:
                progress.start()
            while self.step < r.train.max_steps:
                if self._stop_signal:
                    raise self._interrupted()
                t0 = time.perf_counter()
                pixels, captions = self.stream.next_batch()
                loss, metrics = self.training_step(pixels, captions)
                finite = torch.isfinite(loss.detach()).float()
                if self.world > 1:  # every rank skips together
                    finite = self.acc.reduce(finite.to(self.device), reduction="mean")
                if float(finite) < 1.0:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_in_a_row += 1
                    self.step += 1
                    self._log_metrics({"step": self.step, "loss": None, "skipped": "non-finite loss",
                                       **{k: v for k, v in metrics.items() if math.isfinite(v)}})
                    self.log(f"step {self.step}: non-finite loss, step skipped "
                             f"({self.nonfinite_in_a_row} in a row, limit {r.train.max_nonfinite})")
                    if self.nonfinite_in_a_row >= r.train.max_nonfinite:
                        self.save_checkpoint()
                        raise TrainingError(
                            f"{self.nonfinite_in_a_row} non-finite losses in a row at step {self.step}; checkpoint "
                            f"saved in {self.ckpt_root}. Lower train.learning_rate or check the data, then --resume")
                    continue
                self.nonfinite_in_a_row = 0
                grad_norm = self.apply_gradients(loss, params)
                self.step += 1
                row = {"step": self.step, "loss": float(loss.detach()), **metrics,
                       "skipped_clips": len(self.stream.skipped),
                       "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm) if grad_norm is not None else None,
                       "seconds": round(time.perf_counter() - t0, 4)}
                self._log_metrics(row)
                seconds.append(row["seconds"])
                if progress:
                    progress.update(task, completed=self.step,
                                    description=f"distill loss {row['loss']:.4f}")
                elif self.is_main and (self.step % log_every == 0 or self.step == r.train.max_steps):
                    self._log_line(row, seconds)
                if self.step % r.train.checkpoint_every == 0 or self.step == r.train.max_steps:
                    self.save_checkpoint()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread's handler
            raise self._interrupted(save=False) from None
        finally:
            import signal

            for sig, old in old_handlers.items():
                signal.signal(sig, old)
            if progress:
                progress.stop()

    def _progress(self):
        if not (self.is_main and self.show_progress):
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), transient=False)

    def _log_metrics(self, row: dict) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep))

    # ------------------------------------------------------------------ saving
    def _state(self) -> dict[str, Any]:
        trainable = {n: p.detach() for n, p in self.unet.named_parameters() if p.requires_grad}
        return {
            "step": self.step,
            "student": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema or {},
            "data": {str(self.rank): self.stream.state_dict()},
            "rng": {str(self.rank): rng_state()},
            "recipe": json.loads(json.dumps(self.recipe.to_dict())),
        }

    def save_checkpoint(self) -> None:
        state = self._state()
        if self.world > 1:
            # Collect every rank's data position and RNG state so each resumes where it was.
            from torch import distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, {"data": state["data"], "rng": {}})
            for g in gathered:
                state["data"].update(g["data"])
        if self.is_main:
            save_checkpoint(checkpoint_dir(self.ckpt_root, self.step), state)
            prune_checkpoints(self.ckpt_root, self.recipe.train.keep_checkpoints)
        self.acc.wait_for_everyone()

    def student_meta(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "base_model": r.model.teacher,
            "guidance_embed_dim": r.distill.guidance_embed_dim,
            "schedule": {**self.schedule.describe(), "num_train_timesteps": r.distill.num_train_timesteps,
                         "origin_steps": r.distill.num_ddim_timesteps},
            "default_steps": r.sample.steps,
            "default_guidance": r.sample.guidance,
            "video": asdict(r.video),
            "rewards": [{"name": rc.name, "weight": rc.weight} for rc, _ in self.rewards],
            "trained_steps": self.step,
            **({"motion": {"scale": self.motion.scale, "percentage": self.motion.percentage,
                           "loss_scale": self.motion.loss_scale}} if self.motion is not None else {}),
        }

    def save_final(self) -> Path | None:
        if not self.is_main:
            return None
        path = save_student(self.unet, self.out / "student", self.student_meta())
        self.log(f"student saved to {path}")
        return path

    def write_samples(self) -> list[Path]:
        """Sample the recipe's prompts with the trained student (main process) into output/samples/."""
        r = self.recipe
        if not self.is_main or not r.sample.prompts:
            return []
        from .names import vbench_name
        from .sampling import sample_video
        from .video import write_prompt_sidecar, write_video

        self.unet.eval()
        out = sample_video(self.parts, r.sample.prompts, steps=r.sample.steps, guidance=r.sample.guidance,
                           frames=r.video.frames, height=r.video.height, width=r.video.width, seed=r.sample.seed,
                           fps=r.video.fps if self.parts.default_fps is not None else None)
        self.unet.train()
        written = []
        seen: dict[str, int] = {}
        for prompt, video in zip(r.sample.prompts, out.videos, strict=False):
            index = seen[prompt] = seen.get(prompt, -1) + 1  # a prompt listed twice: -0, -1
            path = self.out / "samples" / vbench_name(prompt, index)
            write_video(video, path, fps=r.video.fps)
            write_prompt_sidecar(path, prompt)
            written.append(path)
        return written

    def plot_curves(self) -> Path | None:
        if not self.is_main:
            return None
        from .plots import plot_metrics

        return plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")

    def write_rank_summary(self) -> Path:
        """Every rank writes rank-<r>.json: a hash of its student weights (identical across ranks under DDP)."""
        import hashlib

        h = hashlib.sha256()
        for name, tensor in sorted(student_state_dict(self.unet).items()):
            h.update(name.encode())
            h.update(tensor.float().numpy().tobytes())
        path = self.out / f"rank-{self.rank}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"rank": self.rank, "world_size": self.world, "step": self.step,
                                       "student_sha256": h.hexdigest(), "data": self.stream.state_dict()}) + "\n")
        return path

    def run(self) -> Path | None:
        self.setup()
        self.train()
        self.write_rank_summary()
        path = self.save_final()
        self.write_samples()
        self.plot_curves()
        self.acc.end_training()
        return path


def run_distill(recipe: Recipe, output_dir: str | Path, resume: bool = False, log=print,
                progress: bool = True, explicit: tuple[str, ...] = ()) -> Path | None:
    """Entry point used by ``t2vturbo distill`` (``explicit``: the dotted keys of its command-line overrides)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Distiller(recipe, output_dir, resume=resume, log=log, progress=progress, explicit=explicit).run()
