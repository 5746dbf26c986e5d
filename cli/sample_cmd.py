"""``t2vturbo sample PROMPT... --steps 4``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, parse_device, quiet_libraries, user_errors
from .main import app


@app.command()
@user_errors
def sample(
    prompts: list[str] = typer.Argument(None, help="One or more prompts (or --prompts-file)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="Prompts, one per line (TXT) or a 'prompt' column (CSV / JSON / JSONL): e.g. a VBench dimension's prompt list."),
    videos_per_prompt: int | None = typer.Option(None, "--videos-per-prompt", "-n", help="Videos per prompt, named {prompt}-{i} (default 1; --vbench sets VBench's own counts)."),
    vbench: str | None = typer.Option(None, "--vbench", metavar="INFO", help="Generate what VBench's standard mode reads: its prompt list VBench_full_info.json (a path, or 'installed' for the vbench package's copy), 5 videos per prompt and 25 for temporal_flickering, into the --out folder; reruns resume."),
    vbench_dimension: list[str] = typer.Option(None, "--vbench-dimension", metavar="DIMENSION", help="With --vbench: only the prompts of this dimension (repeatable; default: all 16)."),
    fmt: str = typer.Option("mp4", "--format", help="Video files written into an --out folder: mp4, gif, webm, or png (a folder of frames per video)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Teacher/base: 'tiny', a diffusers folder or a hub id (default: the student's recorded base model, else tiny)."),
    student: Path | None = typer.Option(None, "--student", "-s", help="Student: our folder, a peft LoRA, or an official unet_lora.pt. Omit to sample the base model as is."),
    teacher: bool = typer.Option(False, "--teacher", help="Sample the base model with DDIM + classifier-free guidance."),
    steps: int | None = typer.Option(None, "--steps", help="UNet evaluations (default: the student's recorded steps, else 4; the teacher: 50)."),
    guidance: float | None = typer.Option(None, "--guidance", "-g", help="Guidance scale (student: via the guidance embedding). Default: the student's recorded one, else the model's, else 7.5."),
    frames: int | None = typer.Option(None, "--frames", help="Default: the student's recorded clip shape, else the model's native one, else 16."),
    height: int | None = typer.Option(None, "--height", help="Default: as --frames (the model's native size is UNet sample_size x the VAE factor)."),
    width: int | None = typer.Option(None, "--width", help="Default: as --height."),
    fps: int | None = typer.Option(None, "--fps", help="Frame rate of the output and fps condition of VideoCrafter2 (default: the model's, else 8)."),
    seed: int = typer.Option(0, "--seed", help="The k-th video of the run (prompt-major) uses seed + k."),
    out: Path | None = typer.Option(None, "--out", "-o", help="A folder for {prompt}-{i}.mp4 files (default outputs/), or one .mp4 / .gif / .webm file. Every video gets a {name}.txt prompt sidecar."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts per batch."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, float16, bfloat16 (auto: fp16 on CUDA, fp32 on CPU)."),
    decode_chunk: int = typer.Option(0, "--decode-chunk", help="VAE-decode at most this many frames at once (0 = all)."),
    origin_steps: int | None = typer.Option(None, "--origin-steps", help="Student: the solver grid its steps are picked from (default: the student's, 200 for a T2V-Turbo-v2 file, else 50)."),
    motion_guidance: float | None = typer.Option(None, "--motion-guidance", help="T2V-Turbo-v2 motion-guided students (unet_mg.pt, or ours distilled with distill.motion): the motion guidance scale (default 0.05, or the student's)."),
    motion_percentage: float | None = typer.Option(None, "--motion-percentage", help="Motion guidance on the steps with t >= 1000 (1 - this); default 0.3, or what the student was distilled with."),
    skip_existing: bool | None = typer.Option(None, "--skip-existing/--overwrite", help="Skip videos already on disk (default with --prompts-file or --vbench, so an interrupted batch resumes) or write over them (default for prompts given here)."),
) -> None:
    """Generate videos with a distilled student (4 steps) or the teacher (DDIM + CFG)."""
    quiet_libraries()
    from t2vturbo.errors import ConfigError
    from t2vturbo.generate import generate_videos, plan_outputs
    from t2vturbo.inputs import read_prompts_file

    listed = list(prompts or [])
    vplan = None
    if vbench is not None:
        vplan = _vbench_plan(vbench, vbench_dimension, listed, prompts_file, videos_per_prompt, out, fmt, seed)
        plan = vplan.videos
    else:
        if vbench_dimension:
            raise ConfigError("--vbench-dimension picks prompts from VBench's list: give --vbench INFO too")
        if prompts_file is not None:
            read = read_prompts_file(prompts_file)
            listed += list(read.values()) if isinstance(read, dict) else list(read)
        plan = plan_outputs(listed, out, 1 if videos_per_prompt is None else videos_per_prompt, fmt, seed)
    skip = skip_existing if skip_existing is not None else (prompts_file is not None or vplan is not None)
    todo = [p for p in plan if not (skip and p.path.exists())]
    if vplan is not None:
        _vbench_summary(vplan, out, {p.path for p in todo}, fmt)
    elif len(todo) < len(plan):
        console.print(f"{len(plan) - len(todo)} of {len(plan)} videos already exist; skipped", highlight=False)
    if not todo:
        if vplan is not None:
            _vbench_done(vplan, out)
        return

    def on_video(w) -> None:
        if vplan is not None:  # VBench's folder holds videos only (see _vbench_summary); the name has the prompt
            w.path.with_suffix(".txt").unlink(missing_ok=True)
        console.print(f"wrote {w.path}  ({w.mode}, {w.steps} steps, {w.seconds:.2f} s/video)", highlight=False)

    generate_videos(
        [p.prompt for p in todo], [p.path for p in todo], model=model, student=student, teacher=teacher, steps=steps,
        guidance=guidance, frames=frames, height=height, width=width, fps=fps, seed=[p.seed for p in todo],
        batch_size=batch_size,
        device=parse_device(device), dtype=dtype, decode_chunk=decode_chunk, origin_steps=origin_steps,
        motion_guidance=motion_guidance, motion_percentage=motion_percentage,
        notice=lambda msg: console.print(msg, highlight=False),
        on_video=on_video,
    )
    if vplan is not None:
        _vbench_done(vplan, out)


def _vbench_plan(info: str, dimensions: list[str] | None, listed: list[str], prompts_file: Path | None,
                 videos_per_prompt: int | None, out: Path | None, fmt: str, seed: int):
    """``--vbench``: the videos VBench's standard mode reads, for the chosen dimensions."""
    from t2vturbo.errors import ConfigError
    from t2vturbo.vbench import plan_vbench, read_info

    if listed or prompts_file is not None:
        raise ConfigError("--vbench takes its prompts from VBench's list; leave out the prompts and --prompts-file")
    if videos_per_prompt is not None:
        raise ConfigError("--vbench writes VBench's own counts (5 videos per prompt, 25 for temporal_flickering); "
                          "leave out --videos-per-prompt")
    if out is None:
        raise ConfigError("--vbench needs --out DIR: the folder VBench's --videos_path will read")
    return plan_vbench(read_info(info), out, dimensions, fmt, seed)


def _vbench_done(vplan, out: Path) -> None:
    """The closing line: what is still missing, or how to evaluate the folder."""
    left = sum(1 for p in vplan.videos if not p.path.exists())
    if left:
        console.print(f"VBench: {len(vplan.videos) - left} of {len(vplan.videos)} videos in {out}; {left} still to "
                      "write (run the same command again)", highlight=False, soft_wrap=True)
        return
    then = ("; temporal_flickering is evaluated on what VBench's static_filter.py --videos_path DIR keeps (5 static "
            "videos of each prompt's 25, in filter_results/filtered_videos)"
            if "temporal_flickering" in vplan.dimensions else "")
    console.print(f"VBench: all {len(vplan.videos)} videos are in {out}; evaluate with: vbench evaluate --videos_path "
                  f"{out} --dimension DIMENSION{then}; then t2vturbo vbench-score RESULTS_FOLDER",
                  highlight=False, soft_wrap=True)


def _vbench_summary(vplan, out: Path, todo: set[Path], fmt: str) -> None:
    """What the plan covers and what remains, per dimension; warnings about what VBench would misread."""
    from rich.markup import escape

    from t2vturbo.vbench import names_vbench_misreads, stray_files

    done = len(vplan.videos) - len(todo)
    console.print(f"VBench standard mode: {len(vplan.prompts)} prompts, {len(vplan.videos)} videos in {out}; "
                  f"{done} already there, {len(todo)} to write", highlight=False, soft_wrap=True)
    for dim, (n_prompts, n_videos, left) in vplan.remaining(lambda p: p not in todo).items():
        console.print(f"  {dim:<24} {n_prompts:>4} prompts x {n_videos // max(n_prompts, 1):>2}  {n_videos:>5} videos"
                      f"  {left:>5} to write", highlight=False)
    odd = names_vbench_misreads(vplan.prompts, fmt)
    if odd:
        console.print(f"[yellow]warning:[/] {len(odd)} prompts cannot be written under VBench's exact name (a '/' "
                      f"or surrounding spaces), so VBench will not find their videos: {escape(repr(odd[0]))}"
                      + (" ..." if len(odd) > 1 else ""), highlight=False, soft_wrap=True)
    # VBench's folder holds videos only: its standard mode takes the extension from the first file it lists. Our
    # own prompt sidecars ({name}.txt, e.g. from a plain `sample` run into this folder) go; anything else is named.
    for video in vplan.videos:
        video.path.with_suffix(".txt").unlink(missing_ok=True)
    stray = stray_files(Path(out), fmt)
    if stray:
        console.print(f"[yellow]warning:[/] {out} holds files that are not .{fmt} videos ({len(stray)}, e.g. "
                      f"{escape(stray[0].name)}); VBench's standard mode takes the video extension from the first file it "
                      "lists, so move them out before evaluating", highlight=False, soft_wrap=True)
