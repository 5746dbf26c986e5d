"""Small builders shared by tests (no network, no shipped weights needed)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_clip_folder(root: Path, n: int = 3, frames: int = 6, size: tuple[int, int] = (40, 48),
                      bad: bool = True) -> Path:
    """A folder of tiny mp4 clips + captions.csv; with ``bad`` one unreadable clip is listed too."""
    from t2vturbo.video import write_video

    root.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow"]
    rows = ["path,caption"]
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        c = colours[i % 4]
        v = torch.rand(frames, 3, *size, generator=gen) * 0.2
        v[:, i % 3] += 0.6
        write_video(v, root / f"clip{i}.mp4", fps=8)
        rows.append(f"clip{i}.mp4,a {c} ball")
    if bad:
        (root / "broken.mp4").write_text("this is not a video")
        rows.append("broken.mp4,a broken clip")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


def small_distill_overrides(data: Path, steps: int = 3, **extra) -> list[str]:
    """Overrides that make recipes/tiny.yaml run in seconds: 4 frames of 32x32 from a clip folder."""
    ov = {
        "model.device": "cpu",
        "video.frames": 4,
        "video.height": 32,
        "video.width": 32,
        "data.source": "folder",
        "data.path": str(data),
        "lora.rank": 4,
        "train.max_steps": steps,
        "train.batch_size": 1,
        "train.checkpoint_every": 2,
        "train.learning_rate": 1e-3,
        "rewards": "[{name: toy-image, weight: 0.5, frames: 2}, {name: toy-video, weight: 0.5, frames: 4}]",
        "sample.prompts": "[a red ball]",
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unet_teacher(unet, default_fps: int | None = None, **fields):
    """A UNet3D teacher around a bare ``unet`` (no VAE, text encoder or schedule): enough for the student surgery
    and the family's student formats. ``default_fps`` marks an fps-conditioned UNet, as loading one does."""
    from t2vturbo.teachers import UNet3DTeacher

    if default_fps is None and getattr(unet, "fps_embedding", None) is not None:
        default_fps = int(unet.fps_embedding.default_fps)
    return UNet3DTeacher(unet=unet, vae=fields.pop("vae", None), text_encoder=fields.pop("text_encoder", None),
                         tokenizer=fields.pop("tokenizer", None), schedule=fields.pop("schedule", None),
                         default_fps=default_fps, **fields)
