"""Training windows read at true speed (issue 28, part 1-2): frames chosen by presentation time at 24 / 25 / 29.97
fps and a variable frame rate, from the start the caller picks, short clips at a lower rate or refused, bad files
as one line. Every clip is made here; each frame writes its own index into its pixels (8 horizontal bands, one
bit each), so the test reads back which frame it got."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from t2vturbo import video
from t2vturbo.errors import VideoReadError
from t2vturbo.video import read_window, set_decoder_threads

#: x264 made to code 3 B-frames between references, the outer two of them non-reference (b-pyramid), as web video
B_FRAMES = {"x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:scenecut=0"}

H, W = 48, 64


def coded(i: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    band = H // 8
    for b in range(8):
        if (i >> b) & 1:
            img[b * band : (b + 1) * band] = 255
    return img


def decode_index(frame: torch.Tensor) -> int:
    """The index a frame of (3, h, w) in [0, 1] shows (the band centres, thresholded)."""
    h = frame.shape[1]
    band = h / 8
    return sum(1 << b for b in range(8) if float(frame[:, int((b + 0.5) * band)].mean()) > 0.5)


def write_clip(path, times: list[float], options: dict | None = None) -> str:
    """Frame i shown from ``times[i]`` seconds (millisecond timestamps), H.264 in mp4 (``options``: more x264
    options)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        # a keyframe every 12 frames: seeking has work to do
        stream.options = {"crf": "12", "g": "12", **(options or {})}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(coded(i), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def shown_at(times: list[float], t: float) -> int:
    """The frame on screen at ``t``: the last whose timestamp (ms, as written) is <= t."""
    return max(i for i, s in enumerate(times) if round(s * 1000) / 1000 <= t + 1e-6)


@pytest.mark.parametrize("rate", [24.0, 25.0, 30000 / 1001])
def test_constant_rates_give_true_speed_frames(tmp_path, rate):
    times = [i / rate for i in range(120)]
    path = write_clip(tmp_path / "clip.mp4", times)
    for start in (0.0, 1.3, 2.05):
        w = read_window(path, 16, 8.0, 32, 32, start=lambda latest, s=start: s)
        assert w.pixels.shape == (16, 3, 32, 32) and w.fps == 8.0
        got = [decode_index(f) for f in w.pixels]
        want = [shown_at(times, start + k / 8.0) for k in range(16)]
        assert got == want, (rate, start)
        assert w.times == pytest.approx([round(times[i] * 1000) / 1000 for i in want], abs=1e-3)


def test_variable_frame_rate_is_read_by_presentation_time(tmp_path):
    rng = np.random.default_rng(0)
    times = np.concatenate([[0.0], np.cumsum(rng.choice([0.02, 0.04, 0.07], size=149))]).tolist()
    path = write_clip(tmp_path / "vfr.mp4", times)
    w = read_window(path, 16, 8.0, 32, 32, start=lambda latest: 0.9)
    assert [decode_index(f) for f in w.pixels] == [shown_at(times, 0.9 + k / 8.0) for k in range(16)]


def test_the_start_is_drawn_from_the_range_that_fits(tmp_path):
    times = [i / 25 for i in range(100)]  # 3.96 s
    path = write_clip(tmp_path / "clip.mp4", times)
    seen = []
    w = read_window(path, 16, 8.0, 32, 32, start=lambda latest: seen.append(latest) or 99.0)
    assert seen[0] == pytest.approx(w.duration - 15 / 8.0)
    # a start past the end is clamped to the last window that fits: its last frame is the clip's end
    assert decode_index(w.pixels[-1]) == shown_at(times, seen[0] + 15 / 8.0)
    assert w.times[0] == pytest.approx(math.floor(seen[0] * 25) / 25, abs=1e-3)


def test_a_short_clip_is_read_at_the_rate_that_fits_or_refused(tmp_path):
    times = [i / 25 for i in range(26)]  # 1 s: 16 frames at 8 fps need 1.875 s
    path = write_clip(tmp_path / "short.mp4", times)
    w = read_window(path, 16, 8.0, 32, 32)
    assert w.fps == pytest.approx(15 / w.duration) and 8.0 < w.fps <= 25.0  # the whole clip, slower than life
    got = [decode_index(f) for f in w.pixels]
    assert got == [shown_at(times, k / w.fps) for k in range(16)] and got[0] == 0 and got[-1] >= 24
    with pytest.raises(VideoReadError, match="too short for 16 frames at 12 fps or less"):
        read_window(path, 16, 8.0, 32, 32, max_fps=12.0)
    tiny = write_clip(tmp_path / "tiny.mp4", [i / 25 for i in range(5)])  # 5 frames: 16 would repeat frames (the ceiling is the file's own average rate)
    with pytest.raises(VideoReadError, match=r"0.16 s is too short for 16 frames at [0-9.]+ fps or less"):
        read_window(tiny, 16, 8.0, 32, 32)


def test_resize_and_crop_happen_before_float(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", [i / 25 for i in range(60)])
    w = read_window(path, 4, 8.0, 24, 40)
    assert w.pixels.shape == (4, 3, 24, 40) and w.pixels.dtype == torch.float32
    assert 0.0 <= float(w.pixels.min()) and float(w.pixels.max()) <= 1.0


def test_bad_files_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(VideoReadError, match="not a decodable video file") as err:
        read_window(broken, 16, 8.0, 32, 32)
    assert "\n" not in str(err.value)
    with pytest.raises(VideoReadError, match="video not found"):
        read_window(tmp_path / "missing.mp4", 16, 8.0, 32, 32)
    import av

    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoReadError, match="no video stream"):
        read_window(audio, 16, 8.0, 32, 32)


def keyframes(path: str) -> list[float]:
    """The presentation times of the file's keyframes (from the packets; nothing decoded)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return sorted(float(p.pts * stream.time_base) for p in container.demux(stream)
                      if p.is_keyframe and p.pts is not None)


def test_keyframe_windows_start_at_the_keyframe_before_the_drawn_start(tmp_path):
    times = [i / 25 for i in range(150)]
    path = write_clip(tmp_path / "clip.mp4", times)
    keys = keyframes(path)
    assert len(keys) >= 5  # g=12: one every 12 frames or sooner
    for start in (0.0, 0.7, 2.05, 3.9, 5.0):
        w = read_window(path, 8, 8.0, 32, 32, start=lambda latest, s=start: s, align="keyframe")
        key = max(k for k in keys if k <= start + 1e-6)
        assert w.times[0] == pytest.approx(key, abs=1e-3), start
        assert [decode_index(f) for f in w.pixels] == [shown_at(times, key + k / 8.0) for k in range(8)], start
    with pytest.raises(ValueError, match="align must be one of random, keyframe"):
        read_window(path, 8, 8.0, 32, 32, align="middle")


def decoded_frames(monkeypatch) -> list[int]:
    """Every frame the window reader gets from the decoder (its pts), appended as it reads."""
    seen: list[int] = []
    inner = video._frames_for

    def counting(*args, **kwargs):
        for frame in inner(*args, **kwargs):
            seen.append(frame.pts)
            yield frame

    monkeypatch.setattr(video, "_frames_for", counting)
    return seen


@pytest.mark.parametrize("align", ["random", "keyframe"])
@pytest.mark.parametrize("rate", [25.0, 30000 / 1001])
def test_frames_no_target_shows_are_not_decoded(tmp_path, monkeypatch, align, rate):
    times = [i / rate for i in range(100)]
    path = write_clip(tmp_path / "b.mp4", times, B_FRAMES)
    keys = keyframes(path)
    starts = (0.3, 1.1, 2.02)
    seen = decoded_frames(monkeypatch)
    reads = {}
    default = video._MAX_AHEAD
    for ahead in (default, 0):  # 0: no packet is read ahead, so every frame is decoded
        monkeypatch.setattr(video, "_MAX_AHEAD", ahead)
        seen.clear()
        reads[ahead] = [read_window(path, 8, 8.0, 32, 32, start=lambda latest, s=s: s, align=align)
                        for s in starts], len(seen)
    (skipping, n_skipping), (whole, n_whole) = reads[default], reads[0]
    for s, a, b in zip(starts, skipping, whole, strict=True):
        assert torch.equal(a.pixels, b.pixels) and a.times == b.times
        begin = s if align == "random" else max(k for k in keys if k <= s + 1e-6)
        assert [decode_index(f) for f in a.pixels] == [shown_at(times, begin + k / 8.0) for k in range(8)]
    # 8 fps out of 25-30: about 2 frames in 3 are shown at no target, and half of all are non-reference B-frames
    assert n_skipping < 0.8 * n_whole, (n_skipping, n_whole)


def test_one_decoder_thread_reads_the_same_frames(tmp_path):
    path = write_clip(tmp_path / "clip.mp4", [i / 25 for i in range(80)])
    threaded = read_window(path, 8, 8.0, 32, 32, start=lambda latest: 1.0)
    set_decoder_threads(1)
    try:
        with video._opened(Path(path)) as (_, stream):
            assert stream.codec_context.thread_count == 1
        single = read_window(path, 8, 8.0, 32, 32, start=lambda latest: 1.0)
    finally:
        set_decoder_threads(0)
    assert torch.equal(threaded.pixels, single.pixels)


def test_opening_decodes_nothing_and_reads_what_a_full_probe_reads(tmp_path, monkeypatch):
    """FFmpeg's stream probe is told not to decode (it decoded the first frames of every clip to learn what the
    mp4 header says): the same windows, timing and frame counts as with the full probe, mp4 and in memory."""
    import io

    import av

    path = write_clip(tmp_path / "b.mp4", [i / 25 for i in range(60)], B_FRAMES)
    with video._opened(Path(path)) as (container, stream):
        assert stream.codec_context.pix_fmt is None  # no frame decoded yet
        header = (stream.frames, stream.average_rate, stream.codec_context.width, video._duration(container, stream))

    def reads():
        data = Path(path).read_bytes()
        return [read_window(src, 8, 8.0, 32, 32, start=lambda latest: 0.7) for src in (path, io.BytesIO(data))]

    unprobed = reads()
    monkeypatch.setattr(video, "_open_unprobed", lambda p: av.open(p if hasattr(p, "read") else str(p)))
    with video._opened(Path(path)) as (container, stream):
        assert stream.codec_context.pix_fmt == "yuv420p"  # FFmpeg's probe decoded frames
        assert header == (stream.frames, stream.average_rate, stream.codec_context.width,
                          video._duration(container, stream))
    for a, b in zip(unprobed, reads(), strict=True):
        assert torch.equal(a.pixels, b.pixels) and a.times == b.times and a.duration == b.duration and a.fps == b.fps
    assert [decode_index(f) for f in unprobed[0].pixels] == [shown_at([i / 25 for i in range(60)], 0.7 + k / 8)
                                                            for k in range(8)]
