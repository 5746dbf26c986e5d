"""Read and write videos: mp4 / webm / gif files and folders of PNG frames.

This is the one place that touches video files. Frames are float tensors of shape (T, 3, H, W) in [0, 1].
Decoding goes through PyAV (via imageio); every failure becomes a one-line :class:`VideoReadError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from .errors import VideoReadError
from .safeio import atomic_path

#: file suffixes read and written as videos; any other path is a folder of PNG frames
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_video_path(path: str | os.PathLike) -> bool:
    """True for a path whose suffix is a video format we read (mp4, webm, gif)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video(path: str | os.PathLike) -> torch.Tensor:
    """Decode a video file (mp4/webm/gif) or a folder of PNG frames into (T, 3, H, W) floats in [0, 1].

    Args:
        path: the video file, or a folder holding one image per frame (sorted by name, natural order).

    Raises:
        VideoReadError: the path is missing, empty, not a video, or cannot be decoded (one line naming it).
    """
    path = Path(path)
    if path.is_dir():
        frames = _read_frame_folder(path)
    else:
        if not path.exists():
            raise VideoReadError(f"video not found: {path}")
        if path.stat().st_size == 0:
            raise VideoReadError(f"cannot read video {path}: the file is empty (0 bytes)")
        frames = _decode_file(path)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)


def _decode_file(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        frames = iio.imread(path, plugin="pyav", format="rgb24")
    except Exception as err:  # PyAV raises many types (InvalidDataError, OSError, ValueError, ...)
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise VideoReadError(f"cannot read video {path}: not a decodable video file ({reason})") from None
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single still image decoded as one frame
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoReadError(f"cannot read video {path}: it holds no frames")
    return np.ascontiguousarray(frames[..., :3])


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _read_frame_folder(folder: Path) -> np.ndarray:
    import imageio.v3 as iio

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES), key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoReadError(f"cannot read video {folder}: the folder holds no PNG/JPEG frames")
    frames = []
    for f in files:
        try:
            img = np.asarray(iio.imread(f))
        except Exception as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise VideoReadError(f"cannot read frame {f}: {reason}") from None
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.dtype != np.uint8:  # e.g. 16-bit PNG
            img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
        frames.append(img[..., :3])
    if len({f.shape for f in frames}) != 1:
        raise VideoReadError(f"cannot read video {folder}: its frames have different sizes")
    return np.stack(frames)


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write (T, 3, H, W) frames in [0, 1] atomically; the suffix picks the format.

    ``.mp4`` (H.264, yuv420p; odd sizes are padded by one edge pixel), ``.webm`` (VP9), ``.gif``; any other
    path becomes a folder of ``00000.png, 00001.png, ...``.

    Args:
        frames: float tensor (T, 3, H, W), values in [0, 1] (clamped).
        path: the output file or folder.
        fps: frames per second (ignored for PNG folders).

    Returns:
        The path written.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"write_video expects frames of shape (T, 3, H, W), got {tuple(frames.shape)}")
    path = Path(path)
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".mp4", ".webm"):
            _write_pyav(pixels, tmp, fps, codec="libx264" if suffix == ".mp4" else "libvpx-vp9")
        elif suffix == ".gif":
            _write_gif(pixels, tmp, fps)
        else:
            _write_png_folder(pixels, tmp)
    return path


def _write_pyav(pixels: np.ndarray, path: Path, fps: float, codec: str) -> None:
    import imageio.v3 as iio

    # yuv420p needs even sizes: repeat the last row/column when needed.
    pad_h, pad_w = pixels.shape[1] % 2, pixels.shape[2] % 2
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    iio.imwrite(path, pixels, plugin="pyav", codec=codec, fps=_fps_for_pyav(fps), out_pixel_format="yuv420p")


def _fps_for_pyav(fps: float):
    from fractions import Fraction

    return int(fps) if float(fps).is_integer() else Fraction(fps).limit_denominator(1001)


def _write_gif(pixels: np.ndarray, path: Path, fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, pixels, plugin="pillow", duration=int(round(1000 / fps)), loop=0)


def _write_png_folder(pixels: np.ndarray, folder: Path) -> None:
    import imageio.v3 as iio

    folder.mkdir(parents=True)
    for i, frame in enumerate(pixels):
        iio.imwrite(folder / f"{i:05d}.png", frame)
