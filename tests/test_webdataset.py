"""Training from WebDataset tar shards (``data.source: webdataset``, as video2dataset writes them): windows at true
speed, the same batches on a resumed stream (with and without loader workers), ranks on disjoint shards, bad
samples and shards skipped and counted, bad paths refused in one line. Every clip is made here: clip ``j``'s frame
``i`` writes ``24 j + i`` into its pixels (test_read_window's bands), so a batch says which frames it holds."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_read_window import H, W, coded, decode_index

from t2vturbo.errors import ConfigError
from t2vturbo.webdata import WebDatasetStream, shard_problem, shard_urls

LENGTH, RATE = 24, 25.0  # frames per clip (0.96 s)
SHARDS = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # clip numbers in each shard; clip 4's caption is in a .json


def clip_bytes(path, first: int) -> bytes:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "12", "g": "8"}
        for i in range(LENGTH):
            frame = av.VideoFrame.from_ndarray(coded(first + i), format="rgb24")
            frame.pts, frame.time_base = round(i / RATE * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path.read_bytes()


def write_shards(root, shards=SHARDS, extra: dict | None = None):
    """``root/0000{k}.tar`` for each list of clips (``extra[k]``: more raw samples appended to shard k)."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for k, clips in enumerate(shards):
        with wds.TarWriter(str(root / f"{k:05d}.tar")) as sink:
            for j in clips:
                sample = {"__key__": f"{j:09d}", "mp4": clip_bytes(root / "tmp.mp4", LENGTH * j)}
                if j == 4:
                    sample["json"] = {"caption": f"clip {j}", "url": "x"}
                else:
                    sample["txt"] = f"clip {j}"
                sink.write(sample)
            for sample in (extra or {}).get(k, []):
                sink.write(sample)
    (root / "tmp.mp4").unlink(missing_ok=True)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def pattern(root, n=len(SHARDS)) -> str:
    return str(root / f"{{00000..{n - 1:05d}}}.tar")


def stream(path, batch=2, **kw) -> WebDatasetStream:
    kw.setdefault("log", lambda m: None)
    return WebDatasetStream(str(path), 4, 32, 32, batch_size=batch, fps=8.0, **kw)


def read(s: WebDatasetStream, batches: int) -> list[tuple[list[list[int]], list[str]]]:
    out = []
    for _ in range(batches):
        pixels, captions = s.next_batch()
        out.append(([[decode_index(f) for f in clip] for clip in pixels], captions))
    return out


def test_batches_are_true_speed_windows_of_the_captioned_clip(shards):
    s = stream(pattern(shards))
    seen = set()
    for frames, captions in read(s, 5):  # 10 samples: all 9 of epoch 0, then the first of epoch 1
        for clip, caption in zip(frames, captions, strict=True):
            j = clip[0] // LENGTH
            assert caption == f"clip {j}" and all(i // LENGTH == j for i in clip), (caption, clip)
            assert all(b - a in (3, 4) for a, b in zip(clip, clip[1:], strict=False)), clip  # 8 fps out of 25
            seen.add(j)
    assert seen == set(range(9)) and s.position == 10 and s.skipped == []
    assert s.batch_fps == [8.0, 8.0]
    pixels, _ = s.next_batch()
    assert pixels.shape == (2, 4, 3, 32, 32) and pixels.dtype == torch.float32
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1


def test_the_same_seed_gives_the_same_batches_and_a_folder_or_one_tar_works(shards):
    first = read(stream(pattern(shards)), 5)
    assert read(stream(pattern(shards)), 5) == first
    assert read(stream(pattern(shards), seed=1), 5) != first
    assert read(stream(shards), 5) == first  # a folder of .tar files: the same sorted list
    one = read(stream(shards / "00001.tar", batch=3), 1)[0][1]
    assert sorted(one) == ["clip 3", "clip 4", "clip 5"]


def test_a_list_file_names_the_shards(shards, tmp_path):
    listing = tmp_path / "shards.txt"  # relative lines from the list's folder, absolute ones, patterns, comments
    rel = Path("..") / shards.name
    listing.write_text(f"# train split\n{rel / '00002.tar'}\n\n{shards / '{00000..00001}.tar'}\n")
    assert shard_urls(str(listing)) == [str(tmp_path / rel / "00002.tar"), str(shards / "00000.tar"),
                                        str(shards / "00001.tar")]
    ordered = sorted(read(stream(listing, batch=3), 3)[i][1][j] for i in range(3) for j in range(3))
    assert ordered == sorted(f"clip {j}" for j in range(9))  # every sample of the three shards, once
    listing.write_text(f"{shards / '00009.tar'}\n")
    with pytest.raises(ConfigError, match=r"shard not found: .*00009\.tar \(1 of 1 missing\)"):
        stream(listing)


@pytest.mark.parametrize(("workers", "batch"), [(0, 2), (1, 2), (2, 3)])
def test_a_resumed_stream_continues_exactly(shards, workers, batch, monkeypatch):
    """3 samples a shard: the state after one batch is in the middle of a shard (with 2 workers, of both shard
    readers' shards, and the second reader is next)."""
    straight = read(stream(pattern(shards), batch, num_workers=workers), 6)
    if workers < 2:
        assert straight == read(stream(pattern(shards), batch), 6)  # 0 or 1 worker: one reader, the same batches
    first = stream(pattern(shards), batch, num_workers=workers)
    got = read(first, 1)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's state.json holds it
    assert state["next_reader"] == (1 if workers == 2 else 0)
    again = stream(pattern(shards), batch, num_workers=workers)
    again.load_state_dict(state)
    if workers == 0:  # the samples already taken are passed over, not decoded
        import t2vturbo.video as video

        decoded = []
        real = video.read_window
        monkeypatch.setattr(video, "read_window", lambda *a, **k: decoded.append(k["name"]) or real(*a, **k))
    got += read(again, 5)
    assert got == straight
    if workers == 0:
        assert len(decoded) == 10
    assert again.position == 6 * batch


def test_a_run_resumed_with_another_worker_count_reads_the_same_batches(shards):
    straight = read(stream(pattern(shards), 3, num_workers=2), 4)
    first = stream(pattern(shards), 3, num_workers=2)
    got = read(first, 1)
    again = stream(pattern(shards), 3, num_workers=0)
    again.load_state_dict(first.state_dict())  # two readers, both served in the training process
    assert got + read(again, 3) == straight
    logged = []
    more = stream(pattern(shards), 3, num_workers=3, log=logged.append)
    more.load_state_dict(first.state_dict())  # two readers: at most 2 loader workers (a divisor of 2)
    assert got + read(more, 3) == straight
    assert any("2 loader worker(s) instead of data.num_workers 3" in m for m in logged)


def test_a_state_from_other_shards_or_ranks_restarts_at_the_next_epoch(shards):
    first = stream(pattern(shards))
    read(first, 5)  # into epoch 1
    state = first.state_dict()
    logged = []
    other = stream(shards / "00000.tar", batch=1, log=logged.append)  # one shard now, not three
    other.load_state_dict(state)
    assert other.position == 10 and "read again from epoch 2" in logged[0]
    assert other._start == [(2, [(0, 0)])]
    folder_state = stream(pattern(shards), log=logged.append)
    folder_state.load_state_dict({"position": 7, "skipped": []})  # a folder stream's state
    assert folder_state.position == 7 and folder_state._start[0][0] == 0


def test_ranks_read_disjoint_whole_shards(shards):
    clips = {}
    for rank in (0, 1):
        s = stream(pattern(shards), batch=1, rank=rank, world_size=2)
        per_rank = 6 if rank == 0 else 3  # 3 shards over 2 ranks: rank 0 reads two a pass, rank 1 one
        clips[rank] = {int(c.split()[1]) for _ in range(per_rank) for c in s.next_batch()[1]}
        read_shards = {j // 3 for j in clips[rank]}
        assert len(clips[rank]) == per_rank and clips[rank] == {j for k in read_shards for j in SHARDS[k]}
    assert not clips[0] & clips[1] and clips[0] | clips[1] == set(range(9))
    with pytest.raises(ConfigError, match=r"3 shard\(s\) for 4 processes.*run at most 3 processes") as err:
        stream(pattern(shards), world_size=4, rank=3)
    assert "\n" not in str(err.value)


def test_bad_samples_and_a_cut_shard_are_skipped_and_counted(tmp_path):
    bad = {0: [{"__key__": "bad-video", "mp4": b"not a video", "txt": "broken"},
               {"__key__": "no-caption", "mp4": b"x"},
               {"__key__": "no-video", "txt": "a caption alone"}]}
    root = write_shards(tmp_path / "s", shards=[[0, 1], [2]], extra=bad)
    whole = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(whole[:700])  # cut inside its first member
    logged = []
    s = stream(pattern(root, 2), batch=1, log=logged.append)
    got = [c for _ in range(3) for c in s.next_batch()[1]]
    assert set(got) == {"clip 0", "clip 1"}
    assert any("00001.tar cannot be read after its first 0 sample(s)" in m and "the rest of it is skipped" in m for m in logged)
    assert any("bad-video.mp4: not a decodable video file" in m for m in logged)
    assert any("no-caption has no caption" in m for m in logged)
    assert any("no-video has no video" in m for m in logged)
    assert len(s.skipped) >= 3 and all(m.startswith("skipping unreadable clip (") for m in logged)
    assert all("\n" not in m for m in logged)


def test_nothing_readable_is_one_error_not_a_hang(tmp_path):
    import webdataset as wds

    root = tmp_path / "bad"
    root.mkdir()
    with wds.TarWriter(str(root / "00000.tar")) as sink:
        sink.write({"__key__": "a", "mp4": b"garbage", "txt": "a"})
    s = stream(root / "00000.tar", batch=1)
    with pytest.raises(ConfigError, match="no readable video in the last 4 samples") as err:
        s.next_batch()
    assert "\n" not in str(err.value)
    with wds.TarWriter(str(root / "empty.tar")) as sink:
        pass
    with pytest.raises(ConfigError, match="held no sample in two whole passes"):
        stream(root / "empty.tar", batch=1).next_batch()


def test_missing_shards_are_refused_in_one_line(shards, tmp_path):
    from t2vturbo.config import load_recipe
    from t2vturbo.recipe_checks import missing_files

    wrong = pattern(shards, 5)  # 00000..00004: two do not exist
    with pytest.raises(ConfigError, match=r"shard not found: .*00003\.tar \(2 of 5 missing\)") as err:
        stream(wrong)
    assert "\n" not in str(err.value)
    assert shard_problem(pattern(shards)) is None
    assert "names no .tar shard" in shard_problem(str(tmp_path))
    assert shard_problem("https://example.com/shards/{00000..00009}.tar") is None  # remote: not checked here
    overrides = ["data.source=webdataset", f"data.path={wrong}"]
    problems = missing_files(load_recipe(REPO / "recipes" / "tiny.yaml", overrides, check=False))
    assert len(problems) == 1 and problems[0].startswith(f"data.path {wrong}: shard not found")
    with pytest.raises(ConfigError, match="shard not found"):  # the run refuses it before anything loads
        load_recipe(REPO / "recipes" / "tiny.yaml", overrides)
    overrides[1] = f"data.path={pattern(shards)}"
    assert missing_files(load_recipe(REPO / "recipes" / "tiny.yaml", overrides)) == []


def test_captions_are_every_shards_captions(shards):
    assert stream(pattern(shards), rank=1, world_size=2).captions() == [f"clip {j}" for j in range(9)]


def test_distill_trains_from_shards_and_resumes_to_the_same_student(shards, tmp_path):
    import shutil

    from helpers import small_distill_overrides
    from safetensors.torch import load_file

    from t2vturbo.config import load_recipe
    from t2vturbo.distill import run_distill
    from t2vturbo.train_state import load_checkpoint

    ov = small_distill_overrides(shards, steps=4, **{"data.source": "webdataset", "data.path": pattern(shards),
                                                     "train.batch_size": 2, "train.num_threads": 1,
                                                     "train.keep_checkpoints": 3, "rewards": "[]",
                                                     "sample.prompts": "[]"})
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", ov)
    out = tmp_path / "run"
    run_distill(recipe, out, log=lambda m: None, progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    data = load_checkpoint(out / "checkpoints" / "step-0000002")["data"]["0"]
    assert data["position"] == 4 and data["source"] == "webdataset" and len(data["readers"]) == 1
    student = out / "student" / "student.safetensors"
    straight = load_file(str(student))
    shutil.rmtree(out / "checkpoints" / "step-0000004")  # as if the run had stopped after step 2's checkpoint
    logs: list[str] = []
    run_distill(recipe, out, resume=True, log=logs.append, progress=False)
    assert any("resumed from" in m and "step-0000002" in m for m in logs)
    again = load_file(str(student))
    for k in straight:  # steps 3 and 4 read the same clips and windows as the straight run
        torch.testing.assert_close(again[k], straight[k], atol=1e-6, rtol=0)
