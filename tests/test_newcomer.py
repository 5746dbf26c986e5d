"""The newcomer's path: each problem a new user met, run again as quoted, gives the right result or one line."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from helpers import small_distill_overrides, write_clip_folder
from typer.testing import CliRunner

from cli.main import app

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"
runner = CliRunner()
FAST = ["--teacher", "--steps", "2"]  # the shipped tiny teacher, 2 DDIM steps: a second per video


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "error:" in res.output, res.output
    for w in words:
        assert w in res.output, (w, res.output)


def test_sample_into_a_folder_then_score_reads_the_right_prompts(tmp_path):
    out = tmp_path / "d"
    res = _cli("sample", "a red circle moving left", "a blue square moving up", *FAST, "--out", out)
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a blue square moving up-0.mp4", "a blue square moving up-0.txt",
                     "a red circle moving left-0.mp4", "a red circle moving left-0.txt"]
    res = _cli("score", out, "--reward", "tiny-video", "--json", tmp_path / "s.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s.json").read_text())
    prompts = {Path(v["path"]).name: v["prompt"] for v in report["videos"]}
    assert prompts == {"a blue square moving up-0.mp4": "a blue square moving up",
                       "a red circle moving left-0.mp4": "a red circle moving left"}


def test_several_prompts_into_one_file_name_keep_their_prompts(tmp_path):
    res = _cli("sample", "a red circle moving left", "a blue square moving up", *FAST, "--out", tmp_path / "s.mp4")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s-0.txt").read_text().strip() == "a red circle moving left"
    assert (tmp_path / "s-1.txt").read_text().strip() == "a blue square moving up"
    res = _cli("score", tmp_path, "--reward", "tiny-video", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(v["prompt"] for v in report["videos"]) == ["a blue square moving up", "a red circle moving left"]


def test_a_file_name_stem_is_reported_not_scored_against(tmp_path):
    import torch

    from t2vturbo.video import write_video

    write_video(torch.rand(4, 3, 24, 24), tmp_path / "s-0.mp4", fps=8)
    res = _cli("score", tmp_path, "--reward", "tiny-video", "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["videos"] == []  # nothing scored against the prompt "s"
    assert any("ambiguous name" in f["error"] for f in report["failures"]), report
    assert "ambiguous name" in res.output


def test_prompts_file_writes_vbench_names_and_a_rerun_writes_none(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na green triangle moving down\na yellow square moving right\n")
    out = tmp_path / "vbench"
    res = _cli("sample", "--prompts-file", prompts, "--videos-per-prompt", 2, *FAST, "--out", out)
    assert res.exit_code == 0, res.output
    videos = sorted(p.name for p in out.glob("*.mp4"))
    assert videos == [f"{p}-{i}.mp4" for p in sorted(prompts.read_text().split("\n")[:3]) for i in (0, 1)]
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    res = _cli("sample", "--prompts-file", prompts, "--videos-per-prompt", 2, *FAST, "--out", out)
    assert res.exit_code == 0 and "6 of 6 videos already exist" in res.output, res.output
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    # an interrupted run resumes: remove one video, only that one is written, with the same seed as before
    (out / "a green triangle moving down-1.mp4").unlink()
    res = _cli("sample", "--prompts-file", prompts, "--videos-per-prompt", 2, *FAST, "--out", out)
    assert "5 of 6 videos already exist" in res.output and (out / "a green triangle moving down-1.mp4").is_file()


def test_out_of_range_steps_are_one_line_errors(tmp_path):
    _one_line_error(_cli("sample", "a red circle", "--steps", 10000, "--out", tmp_path / "a.mp4"), "--steps 10000")
    _one_line_error(_cli("sample", "a red circle", "--teacher", "--steps", 1000, "--out", tmp_path / "b.mp4"),
                    "--steps 1000", "1-999")
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "b.mp4").exists()


def test_bad_outputs_and_prompts_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(_cli("sample", "a red circle", *FAST, "-o", tmp_path / "file" / "v.mp4"), "is a file")
    _one_line_error(_cli("sample", "a red circle", *FAST, "-o", tmp_path / "x.avi"), ".avi", ".mp4")
    _one_line_error(_cli("sample", "", *FAST, "-o", tmp_path / "e.mp4"), "empty")
    _one_line_error(_cli("sample", "a red circle", *FAST, "--format", "avi", "-o", tmp_path / "f"), "--format")
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "x.avi").exists()


def test_lora_rank_zero_fails_in_the_dry_run(tmp_path):
    _one_line_error(_cli("distill", TINY, "lora.rank=0", "--dry-run"), "lora.rank must be at least 1")


def test_resume_with_a_changed_recipe_is_refused_and_max_steps_may_grow(tmp_path):
    clips = write_clip_folder(tmp_path / "clips")
    ov = small_distill_overrides(clips, steps=2, **{"sample.prompts": "[]", "train.checkpoint_every": 1})
    out = tmp_path / "run"
    res = _cli("distill", TINY, *ov, "-o", out)
    assert res.exit_code == 0, res.output
    before = (out / "metrics.jsonl").read_text()
    changed = [o if not o.startswith("lora.rank=") else "lora.rank=8" for o in ov]
    res = _cli("distill", TINY, *changed, "-o", out, "--resume")
    _one_line_error(res, "lora.rank", "train.max_steps=N")
    assert (out / "metrics.jsonl").read_text() == before
    # without the run's own overrides the recipe's 400 steps would quietly become the target: refused
    others = [o for o in ov if not o.startswith("train.max_steps=")]
    _one_line_error(_cli("distill", TINY, *others, "-o", out, "--resume"), "train.max_steps")
    longer = [o if not o.startswith("train.max_steps=") else "train.max_steps=3" for o in ov]
    res = _cli("distill", TINY, *longer, "-o", out, "--resume")
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    mode = stat.S_IMODE((out / "student" / "student.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE((out / "config.yaml").stat().st_mode) and mode & 0o044  # readable as the rest


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    clips = write_clip_folder(tmp_path / "clips")
    ov = small_distill_overrides(clips, steps=200, **{"sample.prompts": "[]", "train.checkpoint_every": 1000,
                                                      "train.num_threads": 1})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "t2vturbo_cli", "distill", str(TINY), *ov, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 11):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    last = steps[-1]
    assert (out / "checkpoints" / f"step-{last:07d}").is_dir(), output  # saved at the step it stopped
    assert f"at step {last}" in output and "--resume" in output and "t2vturbo distill" in output
    # without a terminal the run printed plain progress lines (step, loss, s/step, ETA)
    assert "step 10/200 loss" in output and "s/step ETA" in output


def test_no_progress_prints_plain_step_lines(tmp_path):
    clips = write_clip_folder(tmp_path / "clips")
    ov = small_distill_overrides(clips, steps=4, **{"sample.prompts": "[]"})
    res = _cli("distill", TINY, *ov, "-o", tmp_path / "run", "--no-progress")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("step ")]
    assert len(lines) == 4 and "s/step ETA" in lines[-1] and lines[-1].startswith("step 4/4 loss")
    assert "next: t2vturbo sample" in res.output


def test_offline_rewards_are_listed_in_score_help():
    res = _cli("score", "--help")
    assert "tiny-image" in res.output and "tiny-video" in res.output


def test_ad_hoc_prompts_write_over_an_earlier_video_of_the_same_name(tmp_path):
    """`sample P` then `sample P --teacher`: the second video is written (not skipped as an existing batch item)."""
    out = tmp_path / "o"
    assert _cli("sample", "a red circle moving right", "--teacher", "--steps", 2, "--out", out).exit_code == 0
    video = out / "a red circle moving right-0.mp4"
    first = video.read_bytes()
    res = _cli("sample", "a red circle moving right", "--teacher", "--steps", 3, "--out", out)
    assert res.exit_code == 0 and "already exist" not in res.output, res.output
    assert video.read_bytes() != first
    res = _cli("sample", "a red circle moving right", "--teacher", "--steps", 3, "--out", out, "--skip-existing")
    assert "1 of 1 videos already exist" in res.output
