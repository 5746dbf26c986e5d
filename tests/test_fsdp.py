"""``train.parallel: fsdp`` (issue 29): FSDP2 on CPU gloo with two processes gives the DDP run's student, resumes
exactly (under another number of processes too), writes the same student files, and refuses what it cannot do in
one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import small_distill_overrides, write_clip_folder
from safetensors.torch import load_file

from t2vturbo.config import load_recipe
from t2vturbo.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
TINY_WAN = Path(__file__).resolve().parents[1] / "recipes" / "tiny-wan.yaml"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"), n=4, frames=12)


def torchrun(args: list[str], out: Path, procs: int = 2, port: int = 29561, resume: bool = False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port),
           "-m", "t2vturbo_cli", "distill", *args, "-o", str(out), "--no-progress", *(["--resume"] if resume else [])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                                   "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def student(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "student" / "student.safetensors")


def rel_l2(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    return (num / sum(float((a[k] ** 2).sum()) for k in a)) ** 0.5


def tiny_args(clips, steps: int = 4, **extra) -> list[str]:
    ov = small_distill_overrides(clips, steps=steps, **{"train.num_threads": 1, "sample.prompts": "[]", **extra})
    return [str(TINY), *ov]


def test_fsdp_student_equals_ddp_and_resumes_exactly(clips, tmp_path):
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    torchrun(tiny_args(clips), ddp)
    res = torchrun(tiny_args(clips, **{"train.parallel": "fsdp"}), fsdp)
    assert "FSDP: the network sharded in 8 units over 2 process(es)" in res.stderr + res.stdout
    assert rel_l2(student(ddp), student(fsdp)) <= 1e-3
    r0, r1 = (json.loads((fsdp / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["student_sha256"] == r1["student_sha256"]
    # the checkpoint is whole (gathered): it holds the full LoRA tensors, the student file loads on one process
    from t2vturbo.train_state import list_checkpoints, load_checkpoint

    state = load_checkpoint(list_checkpoints(fsdp / "checkpoints")[-1][1])
    assert state["parallel"] == "fsdp"
    assert {k: tuple(v.shape) for k, v in state["student"].items()} == {
        k: tuple(v.shape) for k, v in load_checkpoint(list_checkpoints(ddp / "checkpoints")[-1][1])["student"].items()}
    # stopped at step 2, resumed to 4: the same student as the straight run
    torchrun(tiny_args(clips, steps=2, **{"train.parallel": "fsdp"}), resumed)
    torchrun(tiny_args(clips, steps=4, **{"train.parallel": "fsdp"}), resumed, resume=True)
    a, b = student(fsdp), student(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_fsdp_tiny_wan_equals_ddp(tmp_path):
    args = [str(TINY_WAN), "model.device=cpu", "train.max_steps=2", "train.batch_size=1", "train.num_threads=1",
            "train.checkpoint_every=100", "sample.prompts=[]", "lora.rank=4", "train.learning_rate=1e-3"]
    torchrun(args, tmp_path / "ddp", port=29563)
    res = torchrun([*args, "train.parallel=fsdp"], tmp_path / "fsdp", port=29563)
    assert "FSDP: the network sharded in" in res.stderr + res.stdout
    assert rel_l2(student(tmp_path / "ddp"), student(tmp_path / "fsdp")) <= 1e-3


def test_fsdp_refusals_are_one_line(clips, tmp_path):
    from t2vturbo.distill import Distiller
    from t2vturbo.parallel import check_fsdp

    def setup(**extra):
        r = load_recipe(TINY, small_distill_overrides(clips, **{"sample.prompts": "[]", **extra}))
        Distiller(r, tmp_path / "run", progress=False, log=lambda m: None).setup()

    with pytest.raises(ConfigError, match="needs several processes: run it under torchrun"):
        setup(**{"train.parallel": "fsdp"})
    with pytest.raises(ConfigError, match="cpu_offload moves GPU shards to CPU memory"):
        setup(**{"train.parallel": "fsdp", "train.fsdp.cpu_offload": "true"})
    r = load_recipe(TINY, small_distill_overrides(clips, **{"train.parallel": "fsdp", "train.optimizer": "adamw8bit"}))
    with pytest.raises(ConfigError, match="adamw8bit cannot step FSDP's sharded"):
        check_fsdp(r, torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"train.parallel.*'ddp' \| 'fsdp'|train.parallel"):
        load_recipe(TINY, ["train.parallel=zero3"])


def test_resume_across_parallelism_modes_is_refused(clips, tmp_path):
    """A DDP checkpoint resumed with train.parallel=fsdp: one line, nothing lost."""
    from t2vturbo.distill import run_distill

    out = tmp_path / "run"
    ov = small_distill_overrides(clips, steps=2, **{"sample.prompts": "[]"})
    run_distill(load_recipe(TINY, ov), out, progress=False, log=lambda m: None)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="train.parallel"):
        run_distill(load_recipe(TINY, [*ov, "train.parallel=fsdp", "train.max_steps=4"]), out, resume=True,
                    progress=False, log=lambda m: None, explicit=("train.parallel", "train.max_steps"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
