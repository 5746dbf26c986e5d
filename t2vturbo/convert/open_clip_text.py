"""The open_clip ViT-H-14 text tower -> transformers ``CLIPTextModel`` (penultimate layer) and its tokenizer
(docs/formats.md §2)."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .lvdm_unet import rename_checked

#: keys of the open_clip text tower that the "penultimate" encoder does not use
_TEXT_UNUSED = ("text_projection", "logit_scale", "attn_mask")


def open_clip_to_hf_text(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename an open_clip text tower (keys without prefix) to CLIPTextModel keys, first ``num_layers`` blocks."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_final.weight": "final_layer_norm.weight",
        "ln_final.bias": "final_layer_norm.bias",
    }
    parts = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        if key in _TEXT_UNUSED:
            continue
        p = key.split(".")
        if p[:2] != ["transformer", "resblocks"]:
            raise CheckpointError(f"VideoCrafter2 text encoder: unexpected key cond_stage_model.model.{key}")
        i, rest = int(p[2]), ".".join(p[3:])
        if i >= num_layers:
            continue  # the last block is not used ("penultimate" layer)
        pre = f"encoder.layers.{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{pre}self_attn.{name}.{kind}"] = chunk
            continue
        base, _, leaf = rest.rpartition(".")
        if base not in parts:
            raise CheckpointError(f"VideoCrafter2 text encoder: unexpected key cond_stage_model.model.{key}")
        out[f"{pre}{parts[base]}.{leaf}"] = value
    return out


def build_text_encoder(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                       num_heads: int | None = None, skip_last: int = 1) -> nn.Module:
    """CLIPTextModel equal to open_clip's text tower run up to its penultimate block, then ln_final.

    Args:
        state: the ``cond_stage_model.model.*`` keys without prefix.
        num_heads: attention heads (default width // 64, as ViT-H-14: 16).
        skip_last: blocks dropped at the end (VC2: 1, the "penultimate" layer).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    if "token_embedding.weight" not in state:
        raise CheckpointError("model.ckpt has no text encoder (cond_stage_model.model.token_embedding); "
                              "pass the original VideoCrafter2 model.ckpt")
    vocab, width = state["token_embedding.weight"].shape
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    layers = blocks - skip_last
    config = CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(width), num_hidden_layers=layers,
        num_attention_heads=num_heads or max(1, int(width) // 64),
        intermediate_size=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        max_position_embeddings=int(state["positional_embedding"].shape[0]),
        hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=int(state["text_projection"].shape[1]) if "text_projection" in state else int(width),
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    model = CLIPTextModel(config)  # small buffers (position_ids) are built here; weights come from the checkpoint
    target = {k: v.shape for k, v in model.state_dict().items()}
    renamed = open_clip_to_hf_text(state, layers)
    checked = rename_checked(renamed, target, lambda k: k, "VideoCrafter2 text encoder")
    model.load_state_dict({k: v.to(dtype) for k, v in checked.items()}, strict=True)
    return model.to(dtype)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in keep + [b for b in range(256) if b not in keep]}


def open_clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of open_clip's tokenizer, read from open_clip's packaged BPE file."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise CheckpointError(f"open_clip's BPE vocabulary is missing ({bpe}); reinstall open-clip-torch")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(max_length: int = 77):
    """transformers CLIPTokenizer equal to open_clip's: lower-case BPE, sot/eot, padded with 0 ("!") to 77."""
    from transformers import CLIPTokenizer

    vocab, merges = open_clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token="!",
                         model_max_length=max_length)


