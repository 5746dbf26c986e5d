"""`t2vturbo score` under torchrun: every process scores its share, rank 0 merges one report."""

import json
import subprocess
import sys

import torch

from t2vturbo.video import write_video


def test_two_process_score_merges_the_same_report_as_one_process(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    gen = torch.Generator().manual_seed(1)
    for i, colour in enumerate(["red", "green", "blue", "yellow", "red"]):
        write_video(torch.rand(4, 3, 16, 16, generator=gen), videos / f"a {colour} ball-{i}.mp4", fps=4)
    (videos / "a broken clip-0.mp4").write_text("not a video")
    base = ["score", str(videos), "--reward", "toy-image", "--reward", "toy-video", "--device", "cpu"]
    one = tmp_path / "one.json"
    two = tmp_path / "two.json"
    r1 = subprocess.run([sys.executable, "-m", "t2vturbo_cli", *base, "--json", str(one)],
                        capture_output=True, text=True, timeout=300)
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         "29541", "-m", "t2vturbo_cli", *base, "--json", str(two)],
                        capture_output=True, text=True, timeout=300)
    assert r1.returncode == 1, r1.stderr[-2000:]  # the broken clip
    assert r2.returncode != 0, r2.stderr[-2000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["num_scored"] == b["num_scored"] == 5
    assert a["num_failed"] == b["num_failed"] == 1
    assert [v["path"] for v in a["videos"]] == [v["path"] for v in b["videos"]]
    for va, vb in zip(a["videos"], b["videos"], strict=True):
        for name in ("toy-image", "toy-video"):
            assert abs(va["scores"][name] - vb["scores"][name]) < 1e-6
    assert b["failures"][0]["path"].endswith("a broken clip-0.mp4")
