"""A folder of videos read as the paper's loader does (issue 28, part 1): each clip gives a window of
``video.frames`` frames at ``data.sample_fps`` true speed from a start drawn from (seed, epoch, clip), the same
on a resumed stream; a short clip is read whole at a higher rate, which the fps-conditioned teacher is fed."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from test_read_window import decode_index, write_clip

from t2vturbo.data import FolderStream
from t2vturbo.errors import ConfigError


def folder(tmp_path, lengths: dict[str, int], rate: float = 25.0):
    """Clips of ``lengths[name]`` frames at ``rate`` fps, index-coded, with a captions.csv."""
    root = tmp_path / "clips"
    root.mkdir(parents=True)
    for name, n in lengths.items():
        write_clip(root / f"{name}.mp4", [i / rate for i in range(n)])
    (root / "captions.csv").write_text("path,caption\n" + "".join(f"{n}.mp4,a clip called {n}\n" for n in lengths))
    return root


def indices(batch: torch.Tensor) -> list[list[int]]:
    return [[decode_index(f) for f in clip] for clip in batch]


def test_windows_are_true_speed_and_drawn_per_epoch(tmp_path):
    root = folder(tmp_path, {"a": 150, "b": 150})  # 6 s at 25 fps
    stream = FolderStream(str(root), None, 8, 32, 32, batch_size=2, seed=3, fps=8.0, log=lambda m: None)
    first = indices(stream.next_batch()[0])
    for clip in first:  # 8 fps out of 25: steps of 3 or 4 frames (the old reader strode 150 / 8 = 18 frames)
        assert all(b - a in (3, 4) for a, b in zip(clip, clip[1:], strict=False)), clip
    assert stream.batch_fps == [8.0, 8.0]
    second = indices(stream.next_batch()[0])  # epoch 1: the same two clips, new windows
    assert sorted(c[0] for c in first) != sorted(c[0] for c in second)


def test_a_resumed_stream_reads_the_same_windows(tmp_path):
    root = folder(tmp_path, {"a": 120, "b": 90, "c": 150})
    straight = FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=0, fps=8.0, log=lambda m: None)
    batches = [indices(straight.next_batch()[0]) for _ in range(4)]
    resumed = FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=0, fps=8.0, log=lambda m: None)
    resumed.next_batch()
    state = resumed.state_dict()
    again = FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=0, fps=8.0, log=lambda m: None)
    again.load_state_dict(state)
    assert [indices(again.next_batch()[0]) for _ in range(3)] == batches[1:]
    other = FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=1, fps=8.0, log=lambda m: None)
    assert [indices(other.next_batch()[0]) for _ in range(4)] != batches


def test_short_clips_are_read_faster_or_skipped(tmp_path):
    root = folder(tmp_path, {"short": 26, "tiny": 5})  # 1 s and 0.16 s at 25 fps; 16 frames at 8 fps need 1.9 s
    logged = []
    stream = FolderStream(str(root), None, 16, 32, 32, batch_size=1, seed=0, fps=8.0, log=logged.append)
    for _ in range(2):
        stream.next_batch()
        assert stream.batch_fps[0] == pytest.approx(15 / 1.001, rel=1e-3)  # the short clip, whole
    assert stream.skipped and "too short" in logged[0]
    only_tiny = folder(tmp_path / "t", {"tiny": 5})
    stream = FolderStream(str(only_tiny), None, 16, 32, 32, batch_size=1, fps=8.0, log=lambda m: None)
    with pytest.raises(ConfigError, match="too short for 16 frames at data.sample_fps 8"):
        stream.next_batch()


def test_the_teacher_is_fed_the_rate_each_clip_was_read_at(tmp_path):
    from helpers import small_distill_overrides

    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    root = folder(tmp_path, {"long": 100, "short": 26})
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", small_distill_overrides(
        root, **{"video.frames": 16, "train.batch_size": 2, "rewards": "[]", "sample.prompts": "[]"}))
    d = Distiller(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    d.setup()
    d.stepper.fps = torch.tensor([8])  # treat the tiny teacher as fps-conditioned: record what it is fed
    seen = []
    denoise = d.teacher.denoise
    d.teacher.denoise = lambda *a, fps=None, **k: seen.append(fps) or denoise(*a, fps=fps, **k)
    pixels, captions = d.stream.next_batch()
    d.training_step(pixels, captions, d.stream.batch_fps)
    rates = sorted(d.stream.batch_fps)
    assert rates[0] == 8.0 and rates[1] == pytest.approx(15 / 1.001, rel=1e-3)
    assert sorted(seen[-1].tolist()) == pytest.approx(rates)


@pytest.mark.parametrize("workers,align,idle", [(1, "random", False), (2, "random", True), (1, "keyframe", True)])
def test_loader_workers_read_the_same_batches_and_resume_exactly(tmp_path, workers, align, idle):
    root = folder(tmp_path, {"a": 120, "b": 90, "c": 150, "bad": 0})
    (root / "bad.mp4").write_bytes(b"not a video")  # skipped and counted the same way with workers

    def stream(n):
        return FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=0, fps=8.0, num_workers=n,
                            log=lambda m: None, align=align, idle_workers=idle)

    plain = stream(0)
    want = [indices(plain.next_batch()[0]) for _ in range(4)]
    loaded = stream(workers)
    got = [indices(loaded.next_batch()[0]) for _ in range(2)]
    state = loaded.state_dict()
    resumed = stream(workers)
    resumed.load_state_dict(state)
    got += [indices(resumed.next_batch()[0]) for _ in range(2)]
    assert got == want
    assert resumed.skipped == plain.skipped and plain.skipped


class _WorkerSetup(torch.utils.data.Dataset):
    """What a loader worker runs under: its scheduling policy, niceness, decoder threads and torch threads."""

    def __len__(self):
        return 1

    def __getitem__(self, _):
        import os

        from t2vturbo import video

        policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
        return policy, os.nice(0), video._decoder_threads, torch.get_num_threads()


@pytest.mark.parametrize("idle", [True, False])
def test_loader_workers_beside_a_cpu_model_run_at_idle_priority(idle):
    """Beside a CPU model a worker must never take a core from it: idle priority, decoding with FFmpeg's threads
    on the cycles the model leaves. Beside a GPU step: normal priority, one decoder thread each."""
    import os

    from t2vturbo.data import worker_init

    loader = torch.utils.data.DataLoader(_WorkerSetup(), batch_size=None, num_workers=1, worker_init_fn=worker_init(idle))
    policy, nice, decoder_threads, threads = next(iter(loader))
    assert threads == 1
    assert decoder_threads == (0 if idle else 1)
    if hasattr(os, "SCHED_IDLE"):
        assert (policy == os.SCHED_IDLE) == idle
    else:
        assert (nice == 19) == idle
    if hasattr(os, "sched_getscheduler"):  # the training process itself is untouched
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_worker_that_may_not_idle_is_niced(monkeypatch):
    import os

    from t2vturbo.data import worker_init

    def refused(*_):
        raise PermissionError("not allowed here")

    monkeypatch.setattr(os, "sched_setscheduler", refused, raising=False)
    loader = torch.utils.data.DataLoader(_WorkerSetup(), batch_size=None, num_workers=1, worker_init_fn=worker_init(True))
    _, nice, decoder_threads, _ = next(iter(loader))
    assert nice == 19 and decoder_threads == 0
    assert os.nice(0) != 19


def test_cpu_training_with_workers_keeps_its_threads_and_idles_the_workers(tmp_path, monkeypatch):
    from t2vturbo.config import load_recipe
    from t2vturbo.distill import Distiller

    root = folder(tmp_path, {"a": 60, "b": 60})
    base = [f"data.path={root}", "data.source=folder", "model.device=cpu", "sample.prompts=[]"]
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    for extra, idle_log in ((["data.num_workers=2"], True), (["data.num_workers=0"], False)):
        calls.clear()
        logs: list[str] = []
        recipe = load_recipe(REPO / "recipes" / "tiny.yaml", base + extra)
        d = Distiller(recipe, tmp_path / f"run-{len(list(tmp_path.iterdir()))}", progress=False, log=logs.append)
        d.setup()
        assert calls == [], extra  # the model computes on all its threads
        assert d.stream.idle_workers  # training on the CPU: the workers (if any) share its cores
        assert any("idle priority" in m for m in logs) == idle_log


def test_a_folder_without_a_table_takes_each_videos_caption_sidecar(tmp_path):
    """video2dataset's ``files`` output (and what ``t2vturbo sample`` writes): NAME.txt beside NAME.mp4, in
    subfolders; a video without a caption is left out and counted, none at all is one line."""
    from t2vturbo.config import load_recipe
    from t2vturbo.data import example_caption

    root = tmp_path / "v2d"
    for rel, n in (("00000/000000000", 150), ("00000/000000001", 120), ("00001/000000002", 90)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_clip(root / f"{rel}.mp4", [i / 25 for i in range(n)])
    (root / "00000" / "000000000.txt").write_text("a red kite over a field\n")
    (root / "00001" / "000000002.txt").write_text("  waves breaking on rocks \n")
    (root / "00000" / "000000001.txt").write_text("\n")  # empty: no caption
    logged = []
    stream = FolderStream(str(root), None, 4, 32, 32, batch_size=2, seed=0, fps=8.0, log=logged.append)
    assert [(c.path, c.caption) for c in stream.clips] == [
        (str(root / "00000" / "000000000.mp4"), "a red kite over a field"),
        (str(root / "00001" / "000000002.mp4"), "waves breaking on rocks")]
    assert any(m.startswith("1 video(s) under") and "left out" in m for m in logged)
    pixels, captions = stream.next_batch()
    assert pixels.shape == (2, 4, 3, 32, 32)
    assert sorted(captions) == ["a red kite over a field", "waves breaking on rocks"]
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", ["data.source=folder", f"data.path={root}"], check=False)
    assert example_caption(recipe) == "a red kite over a field"
    for side in root.rglob("*.txt"):
        side.unlink()
    with pytest.raises(ConfigError, match="no video with a caption beside it"):
        FolderStream(str(root), None, 4, 32, 32, batch_size=2, log=lambda m: None)
