"""`score` over folders: good videos are scored, bad files are reported one line each, JSON/CSV say the same,
and the exit code tells whether anything failed."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from t2vturbo_cli.main import app
from typer.testing import CliRunner

from t2vturbo.errors import ConfigError
from t2vturbo.score import read_prompts_file, score_videos
from t2vturbo.video import write_video

TINY_VICLIP = dict(vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                   embed_dim=16, patch_size=56)


def _clip(colour, t=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1)
    return (0.8 * base + 0.2 * torch.rand(t, 3, size, size, generator=g)).clamp(0, 1)


@pytest.fixture
def folder(tmp_path):
    """Two good videos (VBench name, sidecar), one video without a prompt, a zero-byte file, a text file as mp4."""
    d = tmp_path / "videos"
    write_video(_clip((1, 0, 0)), d / "a red car-0.mp4", fps=8)
    write_video(_clip((0, 0, 1), t=6, seed=1), d / "clip_b.gif", fps=8)
    (d / "clip_b.txt").write_text("a blue sea\n")
    write_video(_clip((0, 1, 0), seed=2), d / "untitled.mp4", fps=8)
    (d / "broken-0.mp4").write_bytes(b"")
    (d / "notes-1.mp4").write_text("these are my notes, not a video\n" * 20)
    return d


def test_score_folder_reports_good_and_bad(folder, tmp_path):
    report = score_videos([folder], ["toy-image", "toy-video"], batch_size=4)
    scored = {v.path.split("/")[-1]: v for v in report.videos}
    assert sorted(scored) == ["a red car-0.mp4", "clip_b.gif"]
    assert scored["a red car-0.mp4"].prompt == "a red car" and scored["a red car-0.mp4"].prompt_source == "vbench-name"
    assert scored["clip_b.gif"].prompt == "a blue sea" and scored["clip_b.gif"].prompt_source == "sidecar"
    assert scored["clip_b.gif"].frames == 6
    # a red clip scores better on the colour reward for "red" than its distance to grey would
    assert scored["a red car-0.mp4"].scores["toy-image"] > -0.1
    failed = {f.path.split("/")[-1]: f.error for f in report.failures}
    assert sorted(failed) == ["broken-0.mp4", "notes-1.mp4", "untitled.mp4"]  # once each, not once per reward
    assert "empty" in failed["broken-0.mp4"] and "not a decodable video" in failed["notes-1.mp4"]
    assert "no prompt" in failed["untitled.mp4"] and "\n" not in "".join(failed.values())
    means = report.means()
    assert means["toy-image"] == pytest.approx(sum(v.scores["toy-image"] for v in report.videos) / 2)
    assert not report.ok


def test_batching_gives_the_same_scores_as_one_by_one(folder):
    # a tiny random ViCLIP (video reward, 8 frames: the 6-frame gif is strided with repeats) and the toy reward
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig

    torch.manual_seed(0)
    model = ViCLIP(ViCLIPConfig(**TINY_VICLIP))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    ckpt = folder.parent / "viclip.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    write_video(_clip((1, 1, 0), seed=3), folder / "a yellow bird-3.mp4", fps=8)
    kwargs = dict(checkpoints={"viclip": str(ckpt)}, reward_options={"viclip": TINY_VICLIP})
    one = score_videos([folder], ["viclip", "toy-image"], batch_size=1, **kwargs)
    many = score_videos([folder], ["viclip", "toy-image"], batch_size=8, **kwargs)
    assert [v.path for v in one.videos] == [v.path for v in many.videos] and len(one.videos) == 3
    for a, b in zip(one.videos, many.videos, strict=True):
        assert a.scores.keys() == {"viclip", "toy-image"}
        for name in a.scores:
            assert a.scores[name] == pytest.approx(b.scores[name], abs=1e-5)
    # the viclip score is the model's own score of the decoded clip
    from t2vturbo.video import read_video

    video = read_video(folder / "a red car-0.mp4")[None]
    with torch.no_grad():
        direct = model.eval()(video, ["a red car"]).item()
    got = next(v for v in many.videos if v.path.endswith("a red car-0.mp4")).scores["viclip"]
    assert got == pytest.approx(direct, abs=1e-5)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json", "txt-named", "txt-ordered"])
def test_prompts_file_formats(tmp_path, kind):
    d = tmp_path / "v"
    write_video(_clip((1, 0, 0)), d / "x1.mp4", fps=8)
    write_video(_clip((0, 0, 1)), d / "x2.mp4", fps=8)
    f = tmp_path / {"csv": "p.csv", "jsonl": "p.jsonl", "json": "p.json"}.get(kind, "p.txt")
    if kind == "csv":
        f.write_text('video,prompt\nx1.mp4,"red, very red"\nx2,blue\n')
    elif kind == "jsonl":
        f.write_text('{"video": "x1.mp4", "prompt": "red, very red"}\n\n{"path": "ignored", "video": "x2", "prompt": "blue"}\n')
    elif kind == "json":
        f.write_text('{"x1.mp4": "red, very red", "x2": "blue"}')
    elif kind == "txt-named":
        f.write_text("x1.mp4\tred, very red\nx2\tblue\n")
    else:
        f.write_text("red, very red\nblue\n")
    report = score_videos([d], ["toy-image"], prompts_file=f)
    assert report.ok
    assert {v.path.split("/")[-1]: v.prompt for v in report.videos} == {"x1.mp4": "red, very red", "x2.mp4": "blue"}
    assert {v.prompt_source for v in report.videos} == {"prompts-file"}


def test_bad_inputs_are_user_errors(tmp_path):
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    write_video(_clip((1, 0, 0)), tmp_path / "only-0.mp4", fps=8)
    with pytest.raises(ConfigError, match="3 prompts for 1 videos"):
        score_videos([tmp_path], ["toy-image"], prompts_file=tmp_path / "p.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no videos"):
        score_videos([tmp_path / "empty"], ["toy-image"])
    (tmp_path / "bad.csv").write_text("file,text\na,b\n")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        read_prompts_file(tmp_path / "bad.csv")


def test_cli_score_table_json_csv_and_exit_codes(folder, tmp_path):
    runner = CliRunner()
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    res = runner.invoke(app, ["score", str(folder), "--reward", "toy-image", "-r", "toy-video", "--json", str(out_json),
                              "--csv", str(out_csv), "--batch-size", "2", "--device", "cpu"])
    assert res.exit_code == 1, res.output
    out = res.output
    assert "a red car-0.mp4" in out and "clip_b.gif" in out and "mean" in out
    failed_lines = [ln for ln in out.splitlines() if ln.startswith("failed:")]
    assert len(failed_lines) == 3
    for name in ("broken-0.mp4", "notes-1.mp4", "untitled.mp4"):
        assert sum(name in ln for ln in failed_lines) == 1
    data = json.loads(out_json.read_text())
    assert data["ok"] is False and data["num_scored"] == 2 and data["num_failed"] == 3
    assert sorted(f["path"].split("/")[-1] for f in data["failures"]) == ["broken-0.mp4", "notes-1.mp4", "untitled.mp4"]
    assert {v["path"].split("/")[-1] for v in data["videos"]} == {"a red car-0.mp4", "clip_b.gif"}
    assert set(data["means"]) == {"toy-image", "toy-video"}
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["error"] == "" for r in rows].count(True) == 2 and len(rows) == 5
    assert float(rows[0]["toy-image"]) == pytest.approx(data["videos"][0]["scores"]["toy-image"], abs=1e-6)

    # only good files: exit 0 (a glob picks them)
    res = runner.invoke(app, ["score", str(folder / "*-0.mp4"), str(folder / "clip_b.gif"), "--reward", "toy-image"])
    assert res.exit_code == 1  # broken-0.mp4 matches the glob too
    res = runner.invoke(app, ["score", str(folder / "a red*.mp4"), str(folder / "clip_b.gif"), "--reward", "toy-image"])
    assert res.exit_code == 0, res.output


def test_cli_usage_errors_exit_2(folder):
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(folder), "--reward", "no-such-reward"])
    assert res.exit_code == 2 and "known rewards" in res.output and "toy-image" in res.output
    res = runner.invoke(app, ["score", str(folder)])
    assert res.exit_code == 2 and "--reward" in res.output
    res = runner.invoke(app, ["score", str(folder), "--reward", "viclip", "--reward-checkpoint", "viclip"])
    assert res.exit_code == 2 and "NAME=PATH" in res.output
    res = runner.invoke(app, ["score", str(folder / "nothing-here"), "--reward", "toy-image"])
    assert res.exit_code == 2 and "no such file or folder" in res.output  # not "no videos found": it is not there
    (folder / "empty-dir").mkdir()
    res = runner.invoke(app, ["score", str(folder / "empty-dir"), "--reward", "toy-image"])
    assert res.exit_code == 2 and "no videos" in res.output


def test_png_folder_video_and_frame_selection(tmp_path):
    from t2vturbo.rewards import RewardModel, register_reward

    class FrameCount(RewardModel):
        """Scores a clip by the number of frames it was given (checks what score passes to rewards)."""

        def __init__(self, kind, num_frames=None):
            super().__init__()
            self.kind, self.num_frames = kind, num_frames

        def forward(self, frames, prompts):
            return torch.full((frames.shape[0],), float(frames.shape[1]))

    register_reward("test-frame-count-image", kind="image")(lambda **kw: FrameCount("image"))
    register_reward("test-frame-count-video", kind="video")(lambda **kw: FrameCount("video", num_frames=8))
    d = tmp_path / "v"
    write_video(_clip((1, 0, 0), t=12), d / "long-0.mp4", fps=8)
    write_video(_clip((0, 1, 0), t=3), d / "frames_clip", fps=8)  # a PNG-frame folder
    (d / "frames_clip.txt").write_text("green")
    rewards = ["test-frame-count-image", "test-frame-count-video"]
    report = score_videos([d / "long-0.mp4", d / "frames_clip"], rewards, max_frames=5)
    got = {v.path.split("/")[-1]: (v.frames, v.scores) for v in report.videos}
    assert report.ok
    assert got["long-0.mp4"] == (12, {"test-frame-count-image": 5.0, "test-frame-count-video": 8.0})
    assert got["frames_clip"] == (3, {"test-frame-count-image": 3.0, "test-frame-count-video": 8.0})


def test_mixed_sizes_are_batched_without_holding_the_folder(tmp_path):
    seen = []

    def on_progress(done, total, name):
        seen.append(done)

    for i, size in enumerate((16, 20, 24, 28, 16)):
        write_video(_clip((1, 0, 0), t=4, size=size, seed=i), tmp_path / f"a red ball-{i}.mp4", fps=8)
    one = score_videos([tmp_path], ["toy-image"], batch_size=1)
    two = score_videos([tmp_path], ["toy-image"], batch_size=2, on_progress=on_progress)
    assert len(one.videos) == len(two.videos) == 5
    for a, b in zip(one.videos, two.videos, strict=True):
        assert a.path == b.path and a.scores["toy-image"] == pytest.approx(b.scores["toy-image"], abs=1e-6)
    assert seen[-1] == 5 and seen[0] < 5  # flushed early (4 sizes buffered), not all at the end


def test_already_loaded_reward_is_used_and_named(tmp_path):
    from t2vturbo.rewards import load_reward

    write_video(_clip((1, 0, 0), t=4), tmp_path / "a red ball-0.mp4", fps=8)
    reward = load_reward("toy-image")
    by_name = score_videos([tmp_path], ["toy-image"])
    given = score_videos([tmp_path], [("my-colour", reward)])
    assert given.rewards == ["my-colour"]
    assert given.videos[0].scores["my-colour"] == pytest.approx(by_name.videos[0].scores["toy-image"])


def test_each_video_is_decoded_once_for_all_rewards(tmp_path, monkeypatch):
    """Two rewards, one decode per video, and only the frames the rewards score are asked for."""
    import t2vturbo.score as score_mod
    from t2vturbo.video import read_video_frames

    calls = []

    def counting(path, pick=None):
        out = read_video_frames(path, pick)
        calls.append((path.name, out[1]))
        return out

    monkeypatch.setattr(score_mod, "read_video_frames", counting)
    for i in range(3):
        write_video(_clip((1, 0, 0), t=12, seed=i), tmp_path / f"a red ball-{i}.mp4", fps=8)
    report = score_videos([tmp_path], ["toy-image", "toy-video"],
                          max_frames=3, workers=2)
    assert report.ok and len(report.videos) == 3
    assert sorted(name for name, _ in calls) == [f"a red ball-{i}.mp4" for i in range(3)]
    from t2vturbo.rewards import load_reward, strided_frame_indices

    video_frames = load_reward("toy-video").num_frames
    want = sorted(set(strided_frame_indices(12, 3)) | set(strided_frame_indices(12, video_frames, repeat=True)))
    assert all(indices == want for _, indices in calls) and len(want) < 12
    one_by_one = {r: score_videos([tmp_path], [r], max_frames=3, workers=1) for r in ("toy-image", "toy-video")}
    for v in report.videos:
        for r, alone in one_by_one.items():
            match = next(a for a in alone.videos if a.path == v.path)
            assert v.scores[r] == pytest.approx(match.scores[r], abs=1e-6)


def test_the_tiny_rewards_score_in_bfloat16_on_a_cpu(tmp_path):
    """`score --dtype bfloat16` with the embedded rewards (their antialiased resize has no bf16 CPU kernel)."""
    for i in range(2):
        write_video(_clip((1, 0, 0), t=8, seed=i), tmp_path / f"a red circle moving left-{i}.mp4", fps=8)
    full = score_videos([tmp_path], ["tiny-image", "tiny-video"])
    half = score_videos([tmp_path], ["tiny-image", "tiny-video"], dtype=torch.bfloat16)
    assert full.ok and half.ok and len(half.videos) == 2
    for a, b in zip(full.videos, half.videos, strict=True):
        for r in ("tiny-image", "tiny-video"):
            assert b.scores[r] == pytest.approx(a.scores[r], abs=0.03)
