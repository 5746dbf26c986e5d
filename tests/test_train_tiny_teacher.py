"""The teacher training script's frame-code initialisation (an option tried for motion; docs/tiny-world.md)."""

import pytest
import torch
from diffusers import UNet3DConditionModel
from helpers import load_script

from t2vturbo.tiny import teacher as tiny


def _script():
    return load_script("train_tiny_teacher")


def test_frame_code_is_a_distinct_input_free_code_per_frame():
    script = _script()
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**tiny.UNET_CONFIG)
    layer = script.frame_code_layers(unet)[0]
    stock = UNet3DConditionModel(**tiny.UNET_CONFIG).down_blocks[0].temp_convs[0]
    script.add_frame_code(layer)
    layer.eval()  # the script trains with dropout off (no_dropout)
    frames, channels = 8, layer.in_dim
    deltas = []
    for seed in (1, 2):
        x = torch.randn(frames, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
        deltas.append((layer(x, num_frames=frames) - x).detach())
        # the stock layer adds nothing at init (zero last conv): the code is all the change, in the code channels
        assert torch.equal(stock(x, num_frames=frames), x)
    group = channels // layer.conv1[0].num_groups
    n = group * -(-8 // group)
    torch.testing.assert_close(deltas[0][:, :n], deltas[1][:, :n])  # the same for any input
    assert deltas[0][:, n:].abs().max() == 0  # the content channels are untouched
    code = deltas[0][:, :n, 0, 0]
    torch.testing.assert_close(code, deltas[0][:, :n, 2, 3])  # the same at every pixel
    assert code.mean(0).abs().max() < 1e-5  # centred over the frames
    gaps = torch.cdist(code, code) + torch.eye(frames) * 1e3
    assert gaps.min() > 1e-3  # every frame's code differs from every other's


def test_train_text_trains_the_encoder_with_the_unet_and_resumes_exactly(tmp_path, monkeypatch):
    import json
    import shutil

    from safetensors.torch import load_file

    from t2vturbo.tiny import world

    script = _script()
    monkeypatch.setattr(world, "TRAVEL", (5.0, 8.0))
    init = tiny.build_tiny_teacher(0).text_encoder.state_dict()
    runs = {}
    for name, stops in (("straight", [None]), ("resumed", [1, None])):
        out = tmp_path / name
        out.mkdir()
        shutil.copytree(tiny.TEACHER_DIR / "vae", out / "vae")
        for stop in stops:
            script.train_unet(out, seed=0, steps=2, batch=2, lr=1e-3, drop=0.1, snr_gamma=5.0, stop_after=stop,
                              checkpoint_dir=out / "ck", travel=(5.0, 8.0), train_text=True,
                              text_source="random")
        runs[name] = load_file(out / "text_encoder" / "model.safetensors")
        meta = json.loads((out / "ck" / "unet-train.json").read_text())
        assert meta["train_text"] is True and meta["travel"] == [5.0, 8.0] and meta["step"] == 2
        stats = json.loads((out / "training_stats.json").read_text())
        assert stats["text_encoder"].startswith("trained with the UNet")
    key = "embeddings.token_embedding.weight"
    assert not torch.equal(runs["straight"][key], init[key])  # the encoder was trained
    for k, v in runs["straight"].items():
        torch.testing.assert_close(runs["resumed"][k], v, rtol=0, atol=0)  # stop + resume = one run


def _tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    tiny.write_tiny_tokenizer(tmp_path / "tok")
    return CLIPTokenizer.from_pretrained(tmp_path / "tok")


def test_text_targets_are_layernorm_outputs_that_keep_one_word_apart_captions_apart(tmp_path):
    from t2vturbo.tiny.world import all_captions

    script = _script()
    tok = _tokenizer(tmp_path)
    caps = all_captions() + [""]
    ids, targets = script.text_targets(tok, caps, seed=0)
    dim = tiny.TEXT_CONFIG["hidden_size"]
    assert targets.shape == (len(caps), tok.model_max_length, dim)
    # what CLIP's final LayerNorm (unit gain, zero bias) can give: zero mean over channels, norm sqrt(D)
    assert targets.mean(-1).abs().max() < 1e-5
    torch.testing.assert_close(targets.norm(dim=-1), torch.full(targets.shape[:2], dim**0.5))
    left, right = caps.index("a red circle moving left"), caps.index("a red circle moving right")
    blue = caps.index("a blue circle moving left")
    # causal: the states before the direction word are the same, after it they differ
    pos = (ids[left] != ids[right]).nonzero()[0].item()
    torch.testing.assert_close(targets[left, :pos], targets[right, :pos])
    last = torch.nn.functional.normalize(targets[:, -1], dim=-1)
    assert (last[left] @ last[right]).item() < 0.8  # the random encoder keeps these at ~0.97
    assert (last[left] @ last[blue]).item() < 0.9
    # the empty caption is the base code everywhere; a stronger direction weight separates directions more
    torch.testing.assert_close(targets[-1], targets[-1, :1].expand_as(targets[-1]))
    _, strong = script.text_targets(tok, caps, seed=0, weights={"direction": 4.0})
    s = torch.nn.functional.normalize(strong[:, -1], dim=-1)
    assert (s[left] @ s[right]).item() < (last[left] @ last[right]).item()
    # reproducible from the seed, different for another seed
    torch.testing.assert_close(script.text_targets(tok, caps, seed=0)[1], targets)
    assert not torch.allclose(script.text_targets(tok, caps, seed=1)[1], targets)


def test_text_stage_fits_the_targets_and_the_unet_stage_loads_its_encoder(tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    from t2vturbo.tiny.world import all_captions

    script = _script()
    stats = script.train_text(tmp_path, seed=0, steps=60, lr=3e-3)
    assert stats["text_mse"] < 0.05 and stats["text_steps"] == 60  # from ~1.9 at init
    text = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    tok = _tokenizer(tmp_path)
    ids, targets = script.text_targets(tok, all_captions() + [""], seed=0)
    with torch.no_grad():
        got = text(ids).last_hidden_state
    assert torch.nn.functional.mse_loss(got, targets).item() == pytest.approx(stats["text_mse"], rel=1e-4)
    # the UNet stage refuses to run on a missing trained encoder, with one line saying what to run
    with pytest.raises(SystemExit, match="--stage text"):
        script.train_unet(tmp_path / "empty", seed=0, steps=1, batch=1, lr=1e-3, drop=0.1, snr_gamma=5.0)


def test_extend_phases_chain_warm_restarts_without_changing_earlier_phases():
    script = _script()
    assert script.extend_phases(900, 1.5e-3, 0, None) == [(0, 900, 1.5e-3)]
    once = script.extend_phases(900, 1.5e-3, 450, 1e-3)
    twice = script.extend_phases(900, 1.5e-3, (450, 300), (1e-3, 5e-4))
    assert once == [(0, 900, 1.5e-3), (900, 450, 1e-3)]
    assert twice[:2] == once and twice[2] == (1350, 300, 5e-4)  # extending again keeps what was trained
    assert script.extend_phases(10, 1e-3, (5, 5), (2e-3,))[1:] == [(10, 5, 2e-3), (15, 5, 2e-3)]  # one lr: all
    assert script.extend_phases(10, 1e-3, (5,), None)[1] == (10, 5, 1e-3)  # no lr: the first phase's
    with pytest.raises(SystemExit, match="one per phase"):
        script.extend_phases(10, 1e-3, (5, 5, 5), (1e-3, 2e-3))


def test_a_run_extended_twice_resumes_into_the_same_weights_as_one_run(tmp_path):
    import shutil

    from safetensors.torch import load_file

    script = _script()
    runs = {}
    for name, plan in (("straight", [(1, 1)]), ("chained", [(), (1,), (1, 1)])):
        out = tmp_path / name
        out.mkdir()
        shutil.copytree(tiny.TEACHER_DIR / "vae", out / "vae")
        for extend in plan:  # the same command, extended once more each time, resumes from the checkpoint
            script.train_unet(out, seed=0, steps=1, batch=2, lr=1e-3, drop=0.1, snr_gamma=5.0,
                              checkpoint_dir=out / "ck", extend=extend or 0, extend_lr=2e-3, zero_snr=True,
                              text_source="random")
        runs[name] = load_file(out / "ck" / "unet-train.safetensors")
    assert set(runs["chained"]) == set(runs["straight"])
    for k, v in runs["straight"].items():
        torch.testing.assert_close(runs["chained"][k], v, rtol=0, atol=0)
