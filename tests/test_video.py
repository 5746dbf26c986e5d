"""Video IO: round trips through mp4 / webm / gif / PNG folders, and one-line errors for files that are not videos."""

from __future__ import annotations

import math

import pytest
import torch

from t2vturbo.errors import VideoReadError
from t2vturbo.video import read_video, write_video


def _smooth_clip(t=6, h=32, w=48):
    """A smooth moving gradient (codecs keep it well), values in [0, 1]."""
    y = torch.linspace(0, 1, h).view(1, 1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w)
    k = torch.arange(t, dtype=torch.float32).view(t, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    return (0.5 + 0.4 * torch.sin(2 * math.pi * (x + 0.5 * y) + 0.5 * k + c)).clamp(0, 1)


@pytest.mark.parametrize("name, tol", [("clip.mp4", 0.03), ("clip.webm", 0.03), ("clip.gif", 0.03), ("frames", 0.003)])
def test_round_trip(tmp_path, name, tol):
    frames = _smooth_clip()
    path = write_video(frames, tmp_path / name, fps=8)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == torch.float32
    assert 0.0 <= back.min() and back.max() <= 1.0
    assert (back - frames).abs().mean() < tol
    assert (tmp_path / name).is_dir() == (name == "frames")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # atomic: no temporary left behind


def test_odd_sizes_are_padded_for_h264(tmp_path):
    frames = _smooth_clip(h=31, w=45)
    back = read_video(write_video(frames, tmp_path / "odd.mp4", fps=8))
    assert back.shape == (6, 3, 32, 46)
    assert (back[:, :, :31, :45] - frames).abs().mean() < 0.03


def test_png_folder_frames_in_natural_order(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    (tmp_path / "f").mkdir()
    for i in (0, 1, 2, 10):  # "10" must come after "2"
        iio.imwrite(tmp_path / "f" / f"frame{i}.png", np.full((4, 4, 3), i * 20, dtype=np.uint8))
    video = read_video(tmp_path / "f")
    assert video.shape == (4, 3, 4, 4)
    assert [round(v * 255) for v in video[:, 0, 0, 0].tolist()] == [0, 20, 40, 200]


def test_unreadable_files_raise_one_line(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 10)
    (tmp_path / "nothing").mkdir()
    for bad, words in [("empty.mp4", "empty"), ("text.mp4", "not a decodable video"), ("missing.gif", "not found"),
                       ("nothing", "no PNG")]:
        with pytest.raises(VideoReadError) as err:
            read_video(tmp_path / bad)
        msg = str(err.value)
        assert bad in msg and words in msg and "\n" not in msg


def test_write_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="T, 3, H, W"):
        write_video(torch.rand(3, 8, 8), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_read_only_the_picked_frames(tmp_path, name):
    """read_video_frames converts only what pick(total) names (sorted, distinct, in range) and says the total."""
    from t2vturbo.video import read_video_frames

    path = write_video(_smooth_clip(t=9), tmp_path / name, fps=8)
    every = read_video(path)
    asked = []

    def pick(total):
        asked.append(total)
        return [6, 1, 1, 42, 3]

    frames, indices, total = read_video_frames(path, pick)
    assert total == 9 and asked and set(asked) == {9}
    assert indices == [1, 3, 6]
    assert torch.equal(frames, every[indices])
    whole, all_idx, n = read_video_frames(path)
    assert n == 9 and all_idx == list(range(9)) and torch.equal(whole, every)
