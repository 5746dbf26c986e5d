"""Read and write videos: mp4 / webm / gif files and folders of PNG frames.

This is the one place that touches video files. Frames are float tensors of shape (T, 3, H, W) in [0, 1].
Decoding and mp4/webm encoding go through PyAV; GIF and PNG frames through Pillow; every failure becomes a one-line :class:`VideoReadError`.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import VideoReadError
from .safeio import atomic_path

#: file suffixes read and written as videos; any other path is a folder of PNG frames
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif")
#: how a training window's start is chosen (``data.window_start``): "random", any time; "keyframe", the keyframe
#: at or before a random time, so nothing before the window is decoded
WINDOW_STARTS = ("random", "keyframe")

_decoder_threads = 0  # 0: FFmpeg's own choice (frame threads, one per core); 1: decode on the calling thread


def set_decoder_threads(threads: int) -> None:
    """Threads each decoder of this process may use (0: FFmpeg's choice). A loader worker sets 1: the workers are
    the parallelism, and extra decoder threads would only take cores from the model."""
    global _decoder_threads
    _decoder_threads = max(0, int(threads))


def write_prompt_sidecar(video: str | os.PathLike, prompt: str) -> Path:
    """``NAME.txt`` beside ``NAME.mp4`` (or ``FOLDER.txt`` beside a PNG folder) holding the prompt: what
    ``t2vturbo score`` reads first, so a written video is always scored against its own prompt."""
    video = Path(video)
    side = video.with_suffix(".txt") if video.suffix.lower() in VIDEO_SUFFIXES else video.parent / f"{video.name}.txt"
    with atomic_path(side) as tmp:
        tmp.write_text(prompt.strip() + "\n", encoding="utf-8")
    return side
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
    return read_video_frames(path)[0]


def read_video_frames(path: str | os.PathLike,
                      pick: Callable[[int], Sequence[int]] | None = None) -> tuple[torch.Tensor, list[int], int]:
    """Decode only the frames a caller needs: ``pick(total)`` names them from the video's frame count.

    Returns ``(frames, indices, total)``: ``frames`` (K, 3, H, W) in [0, 1] are the frames at ``indices`` (the
    sorted, distinct indices ``pick`` named; all frames without ``pick``), ``total`` the video's frame count.
    Frames that are not picked are decoded (inter-frame codecs need them) but never converted to RGB, and
    decoding stops after the last picked frame. Errors as :func:`read_video`.
    """
    path = Path(path)
    if path.is_dir():
        return _read_frame_folder(path, pick)
    if not path.exists():
        raise VideoReadError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"cannot read video {path}: the file is empty (0 bytes)")
    return _decode_file(path, pick)


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def _picked(pick, total: int) -> list[int]:
    if pick is None:
        return list(range(total))
    return sorted({int(i) for i in pick(total) if 0 <= int(i) < total})


def _decode_file(path: Path, pick=None) -> tuple[torch.Tensor, list[int], int]:
    with _opened(path) as (container, stream):
        declared = int(stream.frames or 0)  # from the container's header; 0 when it does not say
        wanted = set(_picked(pick, declared)) if declared and pick is not None else None
        last = max(wanted) if wanted else None
        frames, indices, count = [], [], 0
        for frame in container.decode(stream):
            if wanted is None or count in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
                indices.append(count)
            count += 1
            if last is not None and count > last:
                break
    if not frames:
        raise VideoReadError(f"cannot read video {path}: it holds no frames")
    if wanted is None:  # everything was decoded: pick from the true count now
        keep = _picked(pick, count)
        return _to_tensor([frames[i] for i in keep]), keep, count
    if indices != sorted(wanted):  # the header's count was wrong: decode it all
        return _decode_all_then_pick(path, pick)
    return _to_tensor(frames), indices, declared


@contextlib.contextmanager
def _opened(path: Path | BinaryIO, name: str | None = None):
    """(container, its first video stream, decoded with threads): every PyAV failure inside the block becomes one
    :class:`VideoReadError` line naming the file (``name``, else the path). ``path`` may also be a binary file
    object (e.g. ``io.BytesIO`` of a tar member): PyAV reads it in place."""
    if name is None:
        name = str(path)
    try:
        with _open_unprobed(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"cannot read video {name}: it has no video stream")
            stream = container.streams.video[0]
            if _decoder_threads == 1:
                stream.thread_type = "NONE"
                stream.codec_context.thread_count = 1
            else:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = _decoder_threads
            yield container, stream
    except VideoReadError:
        raise
    except Exception as err:  # PyAV raises many types (InvalidDataError, OSError, ValueError, ...)
        reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
        raise VideoReadError(f"cannot read video {name}: not a decodable video file ({reason})") from None


def _open_unprobed(path: Path | BinaryIO):
    """``av.open`` without the frames FFmpeg decodes while probing the streams (``avformat_find_stream_info``
    decodes some to learn what the header already says in mp4 / webm: a 1080p clip's open took 40 ms of a 170 ms
    window read, now 2 ms). The container's timing, size and frame count are the same (FFmpeg's parsers read them
    from the stream headers, also in MPEG-TS and raw H.264); the pixel format is known after the first decoded
    frame. Only the probe's own decoder is told to skip: the stream's decoder is a new one."""
    import av

    return av.open(path if hasattr(path, "read") else str(path), options={"skip_frame": "all"})


def _decode_all_then_pick(path: Path, pick) -> tuple[torch.Tensor, list[int], int]:
    frames, _, total = _decode_file(path, None)
    keep = _picked(pick, total)
    return frames[keep], keep, total


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _read_frame_folder(folder: Path, pick=None) -> tuple[torch.Tensor, list[int], int]:
    from PIL import Image

    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES), key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoReadError(f"cannot read video {folder}: the folder holds no PNG/JPEG frames")
    keep = _picked(pick, len(files))
    frames = []
    for f in (files[i] for i in keep):
        try:
            with Image.open(f) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise VideoReadError(f"cannot read frame {f}: {reason}") from None
        frames.append(img)
    if len({f.shape for f in frames}) != 1:
        raise VideoReadError(f"cannot read video {folder}: its frames have different sizes")
    return _to_tensor(frames), keep, len(files)


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
    import av

    # yuv420p needs even sizes: repeat the last row/column when needed.
    pad_h, pad_w = pixels.shape[1] % 2, pixels.shape[2] % 2
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=_fps_fraction(fps))
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "threads": "1"} if codec == "libx264" else {"crf": "20", "b": "0"}
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def _write_gif(pixels: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def _write_png_folder(pixels: np.ndarray, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, frame in enumerate(pixels):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")


# ---------------------------------------------------------------------------------------------- training windows
@dataclass
class Window:
    """A clip's training window: ``pixels`` (frames, 3, height, width) in [0, 1], the frame rate they were taken
    at (``fps``: the asked rate, or a lower one for a short clip), the presentation time of each (seconds), and the
    file's duration."""

    pixels: torch.Tensor
    fps: float
    times: list[float]
    duration: float


def read_window(path: str | os.PathLike | bytes | BinaryIO, frames: int, fps: float, height: int, width: int,
                start: Callable[[float], float] = lambda latest: 0.0, max_fps: float | None = None,
                name: str | None = None, align: str = "random") -> Window:
    """Decode ``frames`` frames at ``fps`` true-speed frames per second, from a start time ``start(latest)`` picks
    in [0, latest], resized (short side) and centre-cropped to ``height`` x ``width``.

    Frames are chosen by presentation time, so 24, 25, 29.97 fps and variable-frame-rate files all give the same
    motion speed: the frame shown at time t is the last one whose timestamp is <= t. Only the window is decoded
    (a seek to the keyframe before it, decoding stops after it), and only the chosen frames are converted to RGB,
    at the target size, before they become float: memory is bounded by the window, not the file.

    ``align="keyframe"``: the window starts at the keyframe at or before the drawn start instead (still within the
    clip, since that keyframe is no later), so the frames between that keyframe and the start, which a seek must
    decode and then throws away, are not decoded at all: about half the decoding for a window as long as the
    keyframe interval. The starts are then the clip's keyframes (every 2 s or so in web video), not any time.

    A clip shorter than the window is taken whole, at the rate that fits its frames into its length ((frames - 1)
    / duration, above ``fps``: its motion is slower than true speed, and the fps-conditioned teacher is told that
    rate), up to ``max_fps`` (default: the file's own frame rate, beyond which frames would repeat); a clip too
    short for that is refused (VideoReadError, one line: the caller skips and counts it). Errors as
    :func:`read_video`.

    ``path`` may also be the file's bytes or a seekable binary file object (a tar shard's member); ``name`` is
    what the error lines call it (default: the path, or ``video bytes``).
    """
    if align not in WINDOW_STARTS:
        raise ValueError(f"align must be one of {', '.join(WINDOW_STARTS)}, not {align!r}")
    if isinstance(path, (bytes, bytearray, memoryview)):
        name = name or "video bytes"
        if not len(path):
            raise VideoReadError(f"cannot read video {name}: it is empty (0 bytes)")
        path = io.BytesIO(path)
    elif hasattr(path, "read"):
        name = name or str(getattr(path, "name", "video stream"))
    else:
        path = Path(path)
        name = name or str(path)
        if not path.is_file():
            raise VideoReadError(f"video not found: {name}")
    with _opened(path, name) as (container, stream):
        duration = _duration(container, stream)
        rate = window_rate(duration, frames, fps, max_fps or float(stream.average_rate or 4 * fps), name)
        latest = max(0.0, duration - (frames - 1) / rate) if frames > 1 else duration
        t0 = min(max(0.0, float(start(latest))), latest)
        targets = [t0 + k / rate for k in range(frames)]
        pixels, times = _decode_window(container, stream, targets, height, width, from_keyframe=align == "keyframe")
    return Window(pixels=pixels, fps=rate, times=times, duration=duration)


def window_rate(duration: float, frames: int, fps: float, ceiling: float, name: str = "the clip") -> float:
    """The rate ``frames`` frames are read at from a clip of ``duration`` seconds: ``fps``, or for a clip shorter
    than that window the rate that fits it, up to ``ceiling`` (the file's own rate); shorter still, VideoReadError
    (one line: the caller skips and counts the clip)."""
    if frames <= 1 or duration >= (frames - 1) / fps:
        return fps
    rate = (frames - 1) / duration if duration > 0 else math.inf
    if rate > ceiling:
        raise VideoReadError(f"cannot read video {name}: {duration:.2f} s is too short for {frames} frames at "
                             f"{ceiling:g} fps or less; it is skipped")
    return rate


def _duration(container, stream) -> float:
    """Seconds from the stream's first timestamp to its end (the stream's header, else the container's)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    raise VideoReadError("the file does not say how long it is")


def _decode_window(container, stream, targets: list[float], height: int, width: int, from_keyframe: bool = False
                   ) -> tuple[torch.Tensor, list[float]]:
    """The frames shown at ``targets`` (seconds from the stream's start), converted at the output size;
    ``from_keyframe``: the targets are moved back to start at the keyframe the seek lands on.

    A frame that is on screen at no target and that no other frame is predicted from (a non-reference B-frame)
    is not decoded at all: the packets are read ahead until every frame a target can show is known, and the
    decoder is told to discard the others where it can (FFmpeg's skip_frame NONREF; reference frames are always
    decoded). See :func:`_frames_for`."""
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    if targets[0] > 0:
        container.seek(int((origin + targets[0]) / tb), stream=stream, backward=True, any_frame=False)
    chosen: list[np.ndarray] = []
    times: list[float] = []
    shown = None  # (time, frame) of the last decoded frame at or before the next target
    k = 0
    for frame in _frames_for(container, stream, origin, targets, from_keyframe):
        t = float(frame.pts * tb) - origin if frame.pts is not None else (times[-1] if times else 0.0)
        while k < len(targets) and t > targets[k] + 1e-6:
            pick = shown if shown is not None else (t, frame)  # a target before the first frame: the first
            chosen.append(_fit_frame(pick[1], height, width))
            times.append(pick[0])
            k += 1
        if k == len(targets):
            break
        shown = (t, frame)
    while k < len(targets) and shown is not None:  # the stream ended: the last frame stays on screen
        chosen.append(_fit_frame(shown[1], height, width))
        times.append(shown[0])
        k += 1
    if not chosen:
        raise VideoReadError("it holds no frames")
    return _to_tensor(chosen), times


#: packets read ahead of decoding to find the frames a window shows (beyond it, every frame is decoded)
_MAX_AHEAD = 4096


def _frames_for(container, stream, origin: float, targets: list[float], from_keyframe: bool):
    """Decoded frames of ``stream`` from where the container stands, in presentation order, the frames on screen at
    none of ``targets`` discarded where the decoder can (see :func:`_decode_window`). ``from_keyframe``: the first
    packet (the keyframe a seek lands on; without timestamps, the first frame) moves ``targets`` (in place) to
    start there.

    The packets are first read (not decoded) up to the first whose decode time is past the last target: since a
    frame is never shown before it is decoded, every frame that could be on screen at a target is then known, and
    the frame shown at each target is the last one whose presentation time is at or before it. A file without
    timestamps is decoded whole."""
    tb = stream.time_base
    packets = container.demux(stream)
    ahead: list = []
    exact = True
    for packet in packets:
        ahead.append(packet)
        if packet.pts is None or packet.dts is None or len(ahead) > _MAX_AHEAD:
            exact = exact and packet.size == 0 and packet.pts is None  # (that is the end: every packet is known)
            break
        if from_keyframe:
            from_keyframe = False
            _begin_at(targets, float(packet.pts * tb) - origin)
        if float(packet.dts * tb) - origin > targets[-1] + 1e-6:
            break
    needed: set[int] = set()
    if exact:
        shown = sorted((float(p.pts * tb) - origin, p.pts) for p in ahead if p.pts is not None)
        for t in targets:  # a target before the first frame shows the first
            needed.add(shown[max(0, bisect.bisect_right(shown, (t + 1e-6, math.inf)) - 1)][1] if shown else -1)
    cc = stream.codec_context
    skipping = False
    for packet in itertools.chain(ahead, packets):
        skip = exact and packet.pts is not None and packet.pts not in needed
        if skip != skipping:
            cc.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
        for frame in packet.decode():
            if from_keyframe and frame.pts is not None:
                from_keyframe = False
                _begin_at(targets, float(frame.pts * tb) - origin)
            yield frame


def _begin_at(targets: list[float], start: float) -> None:
    """Move ``targets`` (in place, spacing kept) to begin at ``start`` if that is earlier."""
    if start < targets[0]:
        targets[:] = [x - (targets[0] - max(0.0, start)) for x in targets]


def _fit_frame(frame, height: int, width: int) -> np.ndarray:
    """Resize (short side to cover height x width, in the decoder's scaler) and centre-crop one frame to RGB."""
    scale = max(height / frame.height, width / frame.width)
    nh, nw = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    rgb = frame.to_ndarray(format="rgb24", width=nw, height=nh, interpolation="AREA")
    top, left = (nh - height) // 2, (nw - width) // 2
    return rgb[top : top + height, left : left + width]
