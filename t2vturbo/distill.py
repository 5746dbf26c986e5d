"""The T2V-Turbo recipe: consistency distillation + mixed reward feedback (paper Algorithm 1, docs/method.md).

``Distiller(recipe, out).run()`` does setup -> train -> save, as torchtune's recipes do. Everything runs the same on
one CPU, one GPU or several processes (``accelerate launch`` / ``torchrun``): accelerate wraps the student for DDP,
each rank reads its own shard, and only the main process writes files.

The parts live elsewhere, one job a module: the training step (:mod:`t2vturbo.step`), the run folder and its
checkpoints (:mod:`t2vturbo.run_folder`), the dry run's plan (:mod:`t2vturbo.plan`), the model families
(:mod:`t2vturbo.teachers`), the student surgery (:mod:`t2vturbo.student`), the rewards (:mod:`t2vturbo.rewards`).
The loaders are arguments (the real ones by default), so a benchmark or a test injects its own model or data
instead of patching this module.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import data as _data
from . import rewards as _rewards
from . import teachers as _teachers
from .config import Recipe
from .errors import ConfigError, TrainingError, TrainingInterrupted
from .motion import MotionGuidance
from .names import torch_dtype
from .run_folder import RunFolder, StopSignals, log_line, progress_bar
from .step import DistillStep, EMATarget
from .student import (
    frozen_copy,
    save_student,
    student_for_recipe,
    student_state_dict,
    train_in_fp32,
    trainable_parameters,
)
from .train_state import rng_state, set_rng_state


class Distiller:
    """One distillation run: ``setup()``, ``train()``, ``save_final()`` (``run()`` does all three and the rest).

    Args:
        recipe: the validated recipe.
        output_dir: the run folder.
        resume: continue from the newest complete checkpoint there.
        explicit: the dotted keys of this command line's overrides (a resume may change train.max_steps only so).
        load_teacher, load_reward, make_stream: the loaders (default: the real ones).
    """

    def __init__(self, recipe: Recipe, output_dir: str | Path, resume: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True, explicit: tuple[str, ...] = (), *,
                 load_teacher: Callable = _teachers.load_teacher, load_reward: Callable = _rewards.load_reward,
                 make_stream: Callable = _data.make_stream):
        self.recipe = recipe
        self.explicit = tuple(explicit)
        self.out = Path(output_dir)
        self.folder = RunFolder(self.out)
        self.resume = resume
        self.log = log
        self.show_progress = progress
        self.load_teacher, self.load_reward, self.make_stream = load_teacher, load_reward, make_stream
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.frozen = None  # train.full_finetune: the frozen copy of the teacher's network (build_student)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        r = self.recipe
        self.setup_processes()
        if self.is_main:
            self.folder.prepare(r, self.resume, self.explicit)
        self.acc.wait_for_everyone()
        self.stream = self.make_stream(r, self.rank, self.world, log=self.log)
        if getattr(self.stream, "num_workers", 0) and getattr(self.stream, "idle_workers", False):
            self.log(f"data: {self.stream.num_workers} loader worker(s) decode at idle priority, on the CPU cycles "
                     "the step leaves (data.num_workers: 0, decoding in the step, is as fast on a CPU-only machine and holds "
                     "no worker memory)")
        self.teacher = self.build_student()
        self.rewards = self.build_rewards()
        self.sharded = r.train.parallel == "fsdp"
        clip_grad = self.acc.clip_grad_norm_
        if self.sharded:  # FSDP2: the network sharded in place, block by block (t2vturbo.parallel)
            from .parallel import clip_grad_norm, shard_network

            units = shard_network(self.teacher, r, self.device)
            self.log(f"FSDP: the network sharded in {units} units over {self.world} process(es)")
            if self.frozen is not None:
                units = shard_network(self.teacher, r, self.device, network=self.frozen)
                self.log(f"FSDP: the frozen teacher copy sharded in {units} units")
            self.optimizer, self.scheduler = self.build_optimizer()
            self.ddp_network, clip_grad = self.network, clip_grad_norm
        else:
            self.optimizer, self.scheduler = self.build_optimizer()
            self.ddp_network, self.optimizer = self.acc.prepare(self.network, self.optimizer)
        ema = EMATarget(self.network, r.distill.ema_decay) if r.distill.target == "ema" else None
        if r.distill.num_train_timesteps != self.teacher.schedule.num_train_timesteps:
            raise ConfigError(f"distill.num_train_timesteps is {r.distill.num_train_timesteps} but the teacher's "
                              f"schedule has {self.teacher.schedule.num_train_timesteps}; set it to match")
        self.stepper = DistillStep(r, self.teacher, self.rewards, optimizer=self.optimizer, scheduler=self.scheduler,
                                   network=self.ddp_network, autocast=self.acc.autocast, backward=self.acc.backward,
                                   clip_grad=clip_grad, motion=self.motion, ema=ema, rank=self.rank,
                                   frozen=self.frozen)
        if r.train.cache_text:
            self.cache_text(self.stream.captions())
        if self.resume:
            self.load_resume_state()

    def setup_processes(self) -> None:
        """accelerate (one process or several), threads, the global seed."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        r = self.recipe  # its values were checked when it was built (t2vturbo.recipe_checks)
        if r.train.num_threads:
            torch.set_num_threads(r.train.num_threads)
        cpu = r.model.device == "cpu" or (r.model.device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=cpu, mixed_precision=r.train.mixed_precision)
        self.device = self.acc.device
        self.is_main = self.acc.is_main_process
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        set_seed(r.train.seed)

    def build_student(self):
        """The teacher, and the student as the same network with a LoRA adapter and a guidance projection (no
        second copy); T2V-Turbo-v2's motion projections too with ``distill.motion``. With
        ``train.full_finetune`` the student is the whole network (every parameter trains) and ``self.frozen`` a
        frozen copy of the original network, made first, that the teacher's passes run."""
        r = self.recipe
        dtype = torch_dtype(r.model.dtype, "model.dtype")
        prepared = getattr(self.stream, "text_table", None)
        if prepared is None:
            teacher = self.load_teacher(r.model.teacher, device=self.device, dtype=dtype)
        else:  # training from prepared latents: no text encoder is built, the VAE keeps its decoder only
            table = prepared()
            missing = [p for p in r.sample.prompts if p not in table]
            if missing:
                raise ConfigError(f"sample.prompts {missing[0]!r} was not encoded when data.path was prepared; "
                                  "run t2vturbo prepare again with these sample.prompts (it keeps the shards "
                                  "and rewrites the prompts) or set 'sample.prompts=[]'")
            teacher = self.load_teacher(r.model.teacher, device=self.device, dtype=dtype, text_table=table)
            freed = teacher.drop_vae_encoder()
            self.log(f"training from prepared latents: no text encoder, VAE encoder freed ({freed / 2**20:.0f} MiB)")
        self.frozen = None
        if r.train.full_finetune:  # the teacher: the original network, copied before any training
            self.frozen = frozen_copy(teacher.network)
        student_for_recipe(teacher, r)  # T2V-Turbo-v2: the student learns the motion guidance scale as an input
        m = r.distill.motion
        self.motion = MotionGuidance(m.scale, m.percentage, m.loss_scale) if m.scale > 0 else None
        v = r.video
        try:  # a clip shape the family cannot take: one line naming the recipe keys, before any work
            teacher.latent_shape(v.frames, v.height, v.width)
        except ConfigError as err:
            raise ConfigError(f"video.frames/height/width {v.frames}x{v.height}x{v.width}: {err}") from None
        self.network = teacher.network
        train_in_fp32(self.network)
        if r.train.gradient_checkpointing:
            teacher.enable_block_checkpointing()
        self.network.train()
        return teacher

    def build_rewards(self) -> list[tuple[Any, Any]]:
        """Every configured reward (frozen) on every rank."""
        return [(rc, self.load_reward(rc.name, checkpoint=rc.checkpoint, device=self.device,
                                      dtype=torch_dtype(rc.dtype, f"rewards[{rc.name}].dtype"), **rc.options))
                for rc in self.recipe.rewards]

    def build_optimizer(self):
        """AdamW (or bitsandbytes' 8-bit AdamW) over the adapter and the guidance projection, linear warm-up."""
        t = self.recipe.train
        if t.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise ConfigError("train.optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes) "
                                  "on CUDA; or set train.optimizer=adamw") from None
            opt_cls = bnb.optim.AdamW8bit
        else:
            opt_cls = torch.optim.AdamW
        optimizer = opt_cls(trainable_parameters(self.network), lr=t.learning_rate, weight_decay=t.weight_decay,
                            eps=t.adam_eps)
        warm = t.lr_warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
        return optimizer, scheduler

    def cache_text(self, captions: list[str]) -> int:
        """``train.cache_text``: encode ``captions`` (plus sample.prompts and the empty prompt) with the teacher's
        text encoder and each reward's text tower once, then free those weights; the teacher's ``encode_text`` and
        the rewards' text methods answer from the cache from then on (the same tensors they would compute).
        Returns the bytes of weights freed."""
        prompts = list(dict.fromkeys([*captions, *self.recipe.sample.prompts, ""]))
        freed = 0
        if self.teacher.text_encoder is not None:  # (prepared latents: the teacher has none; its text is stored)
            freed = self.teacher.release_text_encoder(_rewards.prompt_table(self.teacher.encode_text, prompts))
        for _, model in self.rewards:
            freed += model.cache_prompts(prompts)
        _rewards.return_freed_memory()
        self.log(f"text cache: {len(prompts)} prompts encoded once; {freed / 2**20:.0f} MiB of text-encoder "
                 "weights freed")
        return freed

    def load_resume_state(self) -> None:
        found = self.folder.load_newest(self.log)
        if found is None:
            self.log(f"no checkpoint under {self.folder.checkpoints}; starting from step 0")
            return
        state, folder = found
        from .parallel import load_optimizer_state, load_trainable

        made_by = state.get("parallel", "ddp")
        if made_by != self.recipe.train.parallel:
            raise ConfigError(f"checkpoint {folder} was written with train.parallel={made_by}; resume with "
                              f"train.parallel={made_by} (its optimiser state is laid out for it)")
        trainable = {n: p for n, p in self.network.named_parameters() if p.requires_grad}
        missing = [n for n in trainable if n not in state["student"]]
        if missing:
            raise ConfigError(f"checkpoint {folder} does not match this recipe's student (missing {missing[0]}); "
                              "resume with the recipe the run started with")
        load_trainable(self.network, state["student"])
        load_optimizer_state(self.network, self.optimizer, state["optimizer"], self.sharded)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.stepper.ema is not None and state.get("ema"):
            load_trainable(self.network, state["ema"])  # the shadow, laid out (sharded or not) as its parameters
            self.stepper.ema.shadow = {n: p.detach().clone() for n, p in self.network.named_parameters()
                                       if p.requires_grad}
            load_trainable(self.network, state["student"])
        data = state["data"]
        self.stream.load_state_dict(data[str(self.rank)] if str(self.rank) in data else data["0"])
        rng = state.get("rng", {}).get(str(self.rank))
        if rng is not None:
            set_rng_state(rng)
        self.step = int(state["step"])
        if self.is_main:
            self.folder.truncate_metrics(self.step)
        self.log(f"resumed from {folder} at step {self.step}")

    # ------------------------------------------------------------------ one step
    def training_step(self, pixels: torch.Tensor, captions: list[str], clip_fps: list[float] | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and metrics of the step at ``self.step`` (:class:`t2vturbo.step.DistillStep`)."""
        return self.stepper(pixels, captions, self.step, clip_fps)

    def apply_gradients(self, loss: torch.Tensor) -> torch.Tensor | None:
        return self.stepper.apply_gradients(loss)

    # ------------------------------------------------------------------ loop
    def _interrupted(self, signals: StopSignals | None, save: bool = True) -> TrainingInterrupted:
        """Save a checkpoint at the current step, between two steps (one process; with several the last periodic
        one stands; ``save=False`` after a hard stop mid-step, whose state is not a step's end)."""
        done = {step for step, _ in self.folder.list()}
        if save and self.world == 1 and self.step > 0 and self.step not in done:
            self.save_checkpoint()
        where, saved = self.folder.describe_newest()
        name = (signals.received if signals else None) or "interrupted"
        return TrainingInterrupted(f"{name} at step {self.step}: {saved}; run the same command with --resume to go "
                                   "on", where, self.step)

    def _skip_nonfinite(self, metrics: dict) -> None:
        """A non-finite loss: the step is skipped and logged; ``train.max_nonfinite`` in a row stop the run."""
        r = self.recipe
        self.stepper.optimizer.zero_grad(set_to_none=True)
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
                f"saved in {self.folder.checkpoints}. Lower train.learning_rate or check the data, then --resume")

    def train(self) -> None:
        r = self.recipe
        progress = progress_bar() if self.is_main and self.show_progress else None
        task = progress.add_task("distill", total=r.train.max_steps, completed=self.step) if progress else None
        log_every = max(1, min(50, r.train.max_steps // 20))
        seconds: list[float] = []
        signals = None
        try:
            with StopSignals() as signals:
                if progress:
                    progress.start()
                while self.step < r.train.max_steps:
                    if signals.received:
                        raise self._interrupted(signals)
                    t0 = time.perf_counter()
                    pixels, captions = self.stream.next_batch()
                    loss, metrics = self.training_step(pixels, captions, self.stream.batch_fps)
                    finite = torch.isfinite(loss.detach()).float()
                    if self.world > 1:  # every rank skips together
                        finite = self.acc.reduce(finite.to(self.device), reduction="mean")
                    if float(finite) < 1.0:
                        self._skip_nonfinite(metrics)
                        continue
                    self.nonfinite_in_a_row = 0
                    grad_norm = self.apply_gradients(loss)
                    self.step += 1
                    row = {"step": self.step, "loss": float(loss.detach()), **metrics,
                           "skipped_clips": len(self.stream.skipped), "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm) if grad_norm is not None else None,
                           "seconds": round(time.perf_counter() - t0, 4)}
                    self._log_metrics(row)
                    seconds.append(row["seconds"])
                    if progress:
                        progress.update(task, completed=self.step, description=f"distill loss {row['loss']:.4f}")
                    elif self.is_main and (self.step % log_every == 0 or self.step == r.train.max_steps):
                        self.log(log_line(row, r.train.max_steps, seconds))
                    if self.step % r.train.checkpoint_every == 0 or self.step == r.train.max_steps:
                        self.save_checkpoint()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread's handler
            raise self._interrupted(signals, save=False) from None
        finally:
            if progress:
                progress.stop()

    def _log_metrics(self, row: dict) -> None:
        if self.is_main:
            self.folder.append_metrics(row)

    # ------------------------------------------------------------------ saving
    def _state(self) -> dict[str, Any]:
        """The checkpoint's content (under FSDP gathered whole: every rank calls this; the main process saves)."""
        from .parallel import full_tensor, gather_trainable, optimizer_state

        ema = self.stepper.ema
        return {
            "step": self.step,
            "parallel": self.recipe.train.parallel,
            "student": gather_trainable(self.network),
            "optimizer": optimizer_state(self.network, self.optimizer, self.sharded),
            "scheduler": self.scheduler.state_dict(),
            "ema": {n: full_tensor(v).cpu() for n, v in ema.shadow.items()} if ema is not None else {},
            "data": {str(self.rank): self.stream.state_dict()},
            "rng": {str(self.rank): rng_state()},
            "recipe": json.loads(json.dumps(self.recipe.to_dict())),
        }

    def save_checkpoint(self) -> None:
        state = self._state()
        if self.world > 1:
            # Collect every rank's data position so each resumes where it was.
            from torch import distributed as dist

            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, {"data": state["data"], "rng": {}})
            for g in gathered:
                state["data"].update(g["data"])
        if self.is_main:
            self.folder.save(self.step, state, self.recipe.train.keep_checkpoints)
        self.acc.wait_for_everyone()

    def student_meta(self) -> dict[str, Any]:
        """What the student records about itself: the one source of its sampling defaults
        (:mod:`t2vturbo.defaults`)."""
        r = self.recipe
        return {
            "base_model": r.model.teacher,
            "guidance_embed_dim": r.distill.guidance_embed_dim,
            "schedule": {**self.teacher.schedule.describe(), "num_train_timesteps": r.distill.num_train_timesteps,
                         "origin_steps": r.distill.num_ddim_timesteps},
            "default_steps": r.sample.steps,
            "default_guidance": r.sample.guidance,
            "video": asdict(r.video),
            "rewards": [{"name": rc.name, "weight": rc.weight} for rc, _ in self.rewards],
            "trained_steps": self.step,
            **({"full_finetune": True} if r.train.full_finetune else {}),
            **({"motion": self.motion.record()} if self.motion is not None else {}),
        }

    def save_final(self) -> Path | None:
        if not self.is_main:
            return None
        path = save_student(self.teacher, self.out / "student", self.student_meta())
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

        self.network.eval()
        out = sample_video(self.teacher, r.sample.prompts, steps=r.sample.steps, guidance=r.sample.guidance,
                           frames=r.video.frames, height=r.video.height, width=r.video.width, seed=r.sample.seed,
                           fps=r.video.fps if self.teacher.supports_fps else None)
        self.network.train()
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

        return plot_metrics(self.folder.metrics, self.out / "curves.png")

    def write_rank_summary(self, student: dict[str, torch.Tensor] | None = None) -> Path:
        """Every rank writes rank-<r>.json: a hash of its student weights (identical across ranks; ``student``:
        the gathered weights of a sharded run)."""
        return self.folder.write_rank_summary(self.rank, self.world, self.step,
                                              student if student is not None else student_state_dict(self.teacher),
                                              self.stream.state_dict())

    def unshard(self) -> dict[str, torch.Tensor]:
        """After a sharded run: gather the trainable weights (every rank), and give the main process a whole,
        unsharded student built from them (the teacher loaded again), for saving, samples and the check: what
        writes the student is the same whatever the parallelism. Returns the gathered weights."""
        from .parallel import gather_trainable, load_trainable

        full = gather_trainable(self.network)
        if not self.is_main:
            return full
        r = self.recipe
        table = getattr(self.stream, "text_table", None)
        extra = {"text_table": table()} if table is not None else {}
        self.network = self.ddp_network = None
        teacher = self.load_teacher(r.model.teacher, device=self.device, dtype=torch_dtype(r.model.dtype, "model.dtype"),
                                    **extra)
        student_for_recipe(teacher, r)
        train_in_fp32(teacher.network)
        load_trainable(teacher.network, full)
        self.teacher, self.network = teacher, teacher.network
        return full

    def release_frozen(self) -> None:
        """Free the frozen teacher copy of a full fine-tune (after training nothing runs it)."""
        self.frozen = None
        if getattr(self, "stepper", None) is not None:
            self.stepper.frozen = None

    def check(self) -> dict | None:
        """The run's own evidence on the tiny world: its 4-step student judged on every caption, beside the
        teacher's recorded figure (check.json; :func:`t2vturbo.tiny.check.quick_check`, None elsewhere)."""
        if not self.is_main:
            return None
        from .tiny.check import quick_check

        self.network.eval()
        try:
            return quick_check(self.teacher, self.recipe, self.out, log=self.log)
        finally:
            self.network.train()

    def run(self) -> Path | None:
        self.setup()
        self.train()
        self.release_frozen()
        self.write_rank_summary(self.unshard() if self.sharded else None)
        path = self.save_final()
        self.write_samples()
        self.plot_curves()
        self.check()
        self.acc.end_training()
        return path


def run_distill(recipe: Recipe, output_dir: str | Path, resume: bool = False, log=print,
                progress: bool = True, explicit: tuple[str, ...] = ()) -> Path | None:
    """Entry point used by ``t2vturbo distill`` (``explicit``: the dotted keys of its command-line overrides)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return Distiller(recipe, output_dir, resume=resume, log=log, progress=progress, explicit=explicit).run()
