"""Safe loading and atomic writing: hostile pickles, truncated files, interrupted writes."""

import os
import pickle

import pytest
import torch

from t2vturbo.errors import CheckpointError, UnsafeCheckpointError
from t2vturbo.safeio import atomic_path, load_torch_file, load_weights, save_safetensors
from t2vturbo.train_state import list_checkpoints, load_checkpoint, save_checkpoint


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "unet_lora.pt"
    torch.save({"state_dict": _Exploit(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_torch_file(bad)
    assert not marker.exists()
    # a legacy (non-zip) pickle with the same payload
    legacy = tmp_path / "legacy.ckpt"
    with open(legacy, "wb") as fh:
        pickle.dump(_Exploit(marker), fh)
    with pytest.raises(CheckpointError):
        load_torch_file(legacy)
    assert not marker.exists()


def test_plain_tensor_pickles_load(tmp_path):
    p = tmp_path / "ok.pt"
    torch.save([torch.ones(2), torch.zeros(3)], p)
    out = load_torch_file(p)
    assert isinstance(out, list) and out[0].sum() == 2


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_and_empty_files_are_one_line_errors(tmp_path, suffix):
    good = tmp_path / f"w{suffix}"
    tensors = {"a": torch.randn(64, 64)}
    if suffix == ".pt":
        torch.save(tensors, good)
    else:
        save_safetensors(tensors, good)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_weights(cut)
    assert "\n" not in str(err.value) and "cut" in str(err.value)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_weights(empty)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / f"missing{suffix}")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "student.safetensors"
    save_safetensors({"a": torch.ones(2)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert load_weights(target)["a"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.safetensors"]


def test_atomic_folder_replace(tmp_path):
    target = tmp_path / "out"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_checkpoints_without_state_json_are_ignored_and_corrupt_ones_fail_cleanly(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root / "step-0000002", {"step": 2, "w": torch.ones(3)})
    half = root / "step-0000004"
    half.mkdir()
    (half / "tensors.safetensors").write_bytes(b"partial")  # killed before state.json: incomplete
    assert [s for s, _ in list_checkpoints(root)] == [2]
    broken = root / "step-0000006"
    save_checkpoint(broken, {"step": 6, "w": torch.ones(3)})
    data = (broken / "tensors.safetensors").read_bytes()
    (broken / "tensors.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError):
        load_checkpoint(broken)
    assert load_checkpoint(root / "step-0000002")["w"].tolist() == [1.0, 1.0, 1.0]
