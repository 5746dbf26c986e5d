"""Export a student so that it runs without t2vturbo (the layouts are the family's: :meth:`Teacher.write_pipeline`,
:meth:`Teacher.write_adapter`).

- ``diffusers``: a complete stock pipeline folder (``TextToVideoSDPipeline`` + ``LCMScheduler`` for the UNet3D
  family, ``WanPipeline`` + ``FlowMatchLCMScheduler`` for Wan). The LoRA is merged into the weights and the chosen
  guidance scale w is folded into the time embedding: the student adds c = cond_proj(embed(w)) to the sinusoidal
  timestep embedding before its ``linear_1``, so for a fixed w ``linear_1(t + c) = W1 t + (b1 + W1 c)`` and
  ``linear_1.bias += W1 c`` replaces the projection. The result runs with ``guidance_scale=1`` (no CFG batch).
- ``lora``: the adapter alone, in the layout the family's stock pipeline loads (peft's own for a UNet, with the
  guidance projection as a ``modules_to_save`` entry; diffusers' ``load_lora_weights`` file for Wan). A fully
  fine-tuned student (``train.full_finetune``) has no adapter: it exports as ``diffusers`` only.

The guidance folded by default is the one ``t2vturbo sample --student`` uses (:mod:`t2vturbo.defaults`), so the
exported pipeline gives the frames the user saw. Both are written atomically: a failed export leaves no folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError
from .names import torch_dtype
from .safeio import atomic_path

FORMATS = ("diffusers", "lora")
EXPORT_META = "t2vturbo.json"


def pipeline_timesteps(model_spec: str | Path, steps: int) -> list[int] | None:
    """The timesteps stock diffusers runs an exported folder with (its LCMScheduler, ``set_timesteps(steps)``).

    ``None`` when ``model_spec`` is not a folder with an LCMScheduler config. For 4 of 50 steps this is
    [999, 759, 499, 259] (the reference sampler's own choice is [999, 759, 519, 279]); sampling an exported
    model with these is what makes t2vturbo and diffusers agree.
    """
    cfg_file = Path(model_spec) / "scheduler" / "scheduler_config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("_class_name") != "LCMScheduler":
        return None
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(cfg)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def exported_timesteps(model_spec: str | Path, teacher, steps: int) -> list | None:
    """The timesteps an exported student folder is sampled with: its LCMScheduler's (as stock diffusers runs it),
    else its schedule's consistency timesteps on the grid it was distilled on (a flow-matching export's
    FlowMatchLCMScheduler gives the same); None when ``model_spec`` is not an exported student."""
    lcm = pipeline_timesteps(model_spec, steps)
    record = Path(model_spec) / EXPORT_META
    if lcm is not None or not record.is_file():
        return lcm
    info = json.loads(record.read_text())
    if info.get("format") != "t2vturbo-export-diffusers":
        return None
    return teacher.schedule.consistency_timesteps(steps, origin_steps=int(info.get("origin_steps", 50)))


# --------------------------------------------------------------------------------------------- entry point
def export_student(
    student_path: str | Path,
    base_model_spec: str | None = None,
    format: str = "diffusers",  # noqa: A002 - the CLI option's name
    out_dir: str | Path = "exported",
    guidance: float | None = None,
    dtype: str = "float32",
    fps: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``student_path`` (any student format) as a stock pipeline folder or an adapter folder.

    Args:
        student_path: our student folder / .safetensors, a peft LoRA, or a family's own format (an official
            ``unet_lora.pt``, a T2V-Turbo-v2 UNet).
        base_model_spec: the teacher (``tiny``, a folder or a cached hub id); default: the one the student
            records (student.json ``base_model``).
        format: ``"diffusers"`` (merged, guidance folded, the family's stock pipeline with a consistency
            scheduler) or ``"lora"`` (the adapter alone, in the layout the family's pipeline loads).
        out_dir: the folder to write; it appears complete or not at all.
        guidance: the guidance scale w folded into the weights; default: the one ``t2vturbo sample --student``
            uses (:func:`t2vturbo.defaults.sampling_defaults`), so the export gives the frames the user saw.
        dtype: diffusers only: weight dtype of the written pipeline (float32, float16, bfloat16).
        fps: diffusers only, fps-conditioned models (VideoCrafter2): the frame rate folded into the network
            (default: the one ``sample`` uses).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``.
    """
    from .defaults import sampling_defaults
    from .formats import base_model_of, load_any_student, recorded_student_meta
    from .teachers import DEFAULTS_FILE, load_teacher

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    torch_dtype(dtype, "--dtype")  # fail before any work
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    # read once: the base model and (our students only: a peft config has none of these keys) the recipe defaults
    meta = recorded_student_meta(student_path)
    if format == "lora" and meta.get("full_finetune"):
        raise ConfigError(f"{student_path} is a fully fine-tuned student (the whole network, no adapter): there is "
                          "no LoRA to export; use --format diffusers")
    base = base_model_spec or base_model_of(meta)
    if not base:
        raise ConfigError(f"{student_path} does not record its base model; pass it with --model")
    teacher = load_teacher(base)
    implied = load_any_student(student_path, teacher)
    defaults = sampling_defaults(teacher, meta, "student", implied)
    guidance = defaults.guidance if guidance is None else float(guidance)
    info = {"format": f"t2vturbo-export-{format}", "source": str(student_path), "base_model": base,
            "origin_steps": defaults.origin_steps, "default_steps": defaults.steps}
    with atomic_path(out) as tmp:
        if format == "lora":
            info.update(teacher.write_adapter(tmp, guidance=guidance, base_spec=base, meta=meta))
        else:
            folded_fps = (defaults.fps if fps is None else fps) if teacher.supports_fps else None
            info.update(teacher.write_pipeline(tmp, guidance=guidance, origin_steps=defaults.origin_steps,
                                               dtype=torch_dtype(dtype), fps=folded_fps, base_spec=base))
            info.update(guidance_folded=guidance, run_with={"guidance_scale": 1.0})
            # the student's own defaults travel with the folder: `t2vturbo sample --model DIR` then samples the
            # shape and steps `sample --student` did (the model's stored defaults, :mod:`t2vturbo.defaults`)
            stored = {"frames": defaults.frames, "height": defaults.height, "width": defaults.width,
                      "fps": defaults.fps, "steps": defaults.steps}
            (tmp / DEFAULTS_FILE).write_text(json.dumps(stored, indent=1) + "\n")
        (tmp / EXPORT_META).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return out
