"""Golden data for tests/test_convert_workdir_llamagen.py, made by LlamaGen's OWN code.

Follows FoundationVision/LlamaGen at commit ce98ec41803a74a90ce68c40ababa9eaeffeb4ec
(2024-06-30). The source is not vendored: point ``LLAMAGEN_SRC`` at a checkout of that
commit (``git clone https://github.com/FoundationVision/LlamaGen``); this script imports
``autoregressive.models.gpt`` (``Transformer``, ``ModelArgs``), ``autoregressive.models.generate``
(``generate``) and ``tokenizer.tokenizer_image.vq_model`` (``VQModel``, ``Encoder``,
``Decoder``) from it and runs them on CPU (they need no GPU).

Tiny sizes, every parameter random (rounded to float16, the stored precision):
- VQ: ``VQModel(ModelArgs(codebook_size=32, codebook_embed_dim=8, z_channels=32))`` whose
  encoder / decoder are LlamaGen's ``Encoder`` / ``Decoder`` with ``ch=32, ch_mult=(1, 1)``,
  ``num_res_blocks=1`` (``VQModel`` hard-codes ch=128): 8 x 8 images -> 4 x 4 codes.
- GPT: ``Transformer(ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=10,
  block_size=16, multiple_of=32))``, c2i.

- t2i GPT: the same ``Transformer`` with ``model_type="t2i", caption_dim=8,
  cls_token_num=120`` (``CaptionEmbedder`` hard-codes 120 caption tokens) and no dropout.
  Captions of 120, 37 and 5 real tokens, left-padded as LlamaGen's t2i data (``emb_mask[-n:] =
  1``): ``generate(..., emb_masks=...)`` codes (cfg 2.0 top-k 1; cfg 1.0 greedy; and unmasked,
  to show the masks matter) and the teacher-forced training logits with the attention mask of
  ``dataset/t2i.py`` (tril, caption columns times the mask, ones on the diagonal).

Writes tests/data/llamagen_orig_{gpt,vq,t2i}.safetensors (the state dicts, float16) and
tests/data/llamagen_orig_golden.npz: ``labels``; codes from ``generate`` (greedy =
``sample_logits=False``, and ``top_k=1``) at cfg 2.0 and without guidance; their decoded pixels
(``VQModel.decode_code``, clamped to [-1, 1], NHWC); an image and its VQ codes (``encode``).

    LLAMAGEN_SRC=/path/to/LlamaGen .venv/bin/python tests/golden/make_llamagen_workdir_golden.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

DATA = Path(__file__).resolve().parents[1] / "data"
LABELS = [1, 7, 3]


def original():
    src = os.environ.get("LLAMAGEN_SRC")
    if not src or not Path(src, "autoregressive", "models", "gpt.py").exists():
        raise SystemExit("set LLAMAGEN_SRC to a LlamaGen checkout (commit ce98ec4)")
    sys.path.insert(0, src)
    from autoregressive.models import generate, gpt
    from tokenizer.tokenizer_image import vq_model

    return gpt, generate, vq_model


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random (norm scales around 1), rounded to float16 precision."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif "embedding" in name:
                value = noise
            else:
                value = noise * (0.5 / max(p[0].numel(), 1) ** 0.5)
            p.copy_(value.half().float())


def build_vq(vq_model):
    args = vq_model.ModelArgs(codebook_size=32, codebook_embed_dim=8, z_channels=32)
    vq = vq_model.VQModel(args)
    sizes = dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=32)
    vq.encoder, vq.decoder = vq_model.Encoder(**sizes), vq_model.Decoder(**sizes)
    return vq.eval()


def t2i_golden(gpt, generate, gen: torch.Generator) -> dict[str, np.ndarray]:
    """Codes and logits of a tiny t2i model on padded captions (see the module docstring)."""
    args = gpt.ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=32, block_size=16,
                         multiple_of=32, model_type="t2i", caption_dim=8, cls_token_num=120,
                         class_dropout_prob=0.0, token_dropout_p=0.0, resid_dropout_p=0.0,
                         ffn_dropout_p=0.0)  # fmt: skip
    model = gpt.Transformer(args)
    randomize(model, gen)
    with torch.no_grad():  # the uncond_embedding buffer too
        emb = model.cls_embedding.uncond_embedding
        emb.copy_(emb.half().float())
    lc, batch = args.cls_token_num, 3
    captions = (torch.randn(batch, lc, 8, generator=gen)).half().float()
    masks = torch.zeros(batch, lc)
    for row, valid in enumerate((120, 37, 5)):
        masks[row, -valid:] = 1
    out = {"t2i_captions": captions.numpy(), "t2i_masks": masks.numpy().astype(np.int32)}
    model.eval()
    with torch.no_grad():
        runs = {"top1_cfg2": dict(cfg_scale=2.0, top_k=1),
                "greedy_nocfg": dict(cfg_scale=1.0, sample_logits=False)}  # fmt: skip
        for name, kw in runs.items():
            codes = generate.generate(model, captions, 16, emb_masks=masks, **kw)
            out["t2i_codes_" + name] = codes.numpy().astype(np.int32)
        unmasked = generate.generate(model, captions, 16, cfg_scale=2.0, top_k=1)
        out["t2i_codes_unmasked_top1_cfg2"] = unmasked.numpy().astype(np.int32)
        model.train()  # LlamaGen's teacher-forced path (no dropout is configured)
        for layer in model.layers:  # generate() left KV caches behind; training has none
            layer.attention.kv_cache = None
        codes = torch.from_numpy(out["t2i_codes_top1_cfg2"]).long()
        length = lc + args.block_size
        attn = torch.tril(torch.ones(length, length))[None].repeat(batch, 1, 1)
        attn[:, :, :lc] = attn[:, :, :lc] * masks[:, None, :]
        eye = torch.eye(length)[None]
        attn = (attn * (1 - eye) + eye).bool()[:, None]
        logits, _ = model(codes[:, :-1], captions, mask=attn[:, :, :-1, :-1])
        out["t2i_logits"] = logits.numpy()
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, DATA / "llamagen_orig_t2i.safetensors")
    return out


def main() -> None:
    gpt, generate, vq_model = original()
    gen = torch.Generator().manual_seed(0)
    vq = build_vq(vq_model)
    args = gpt.ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=10,
                         block_size=16, multiple_of=32)  # fmt: skip
    model = gpt.Transformer(args).eval()
    randomize(vq, gen)
    randomize(model, gen)
    labels = torch.tensor(LABELS)
    golden = {"labels": labels.numpy().astype(np.int32)}
    runs = {
        "greedy_cfg2": dict(cfg_scale=2.0, sample_logits=False),
        "top1_cfg2": dict(cfg_scale=2.0, top_k=1),
        "greedy_nocfg": dict(cfg_scale=1.0, sample_logits=False),
    }
    with torch.no_grad():
        for name, kw in runs.items():
            codes = generate.generate(model, labels, args.block_size, **kw)
            pixels = vq.decode_code(codes, shape=[len(LABELS), 8, 4, 4]).clamp(-1, 1)
            golden["codes_" + name] = codes.numpy().astype(np.int32)
            golden["pixels_" + name] = pixels.permute(0, 2, 3, 1).numpy()
        image = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
        _, _, (_, _, indices) = vq.encode(image)
        golden["image"] = image.permute(0, 2, 3, 1).numpy()
        golden["image_codes"] = indices.reshape(2, 4, 4).numpy().astype(np.int32)
    golden.update(t2i_golden(gpt, generate, gen))
    for name, module in (("gpt", model), ("vq", vq)):
        state = {k: v.half().contiguous() for k, v in module.state_dict().items()}
        save_file(state, DATA / f"llamagen_orig_{name}.safetensors")
    np.savez_compressed(DATA / "llamagen_orig_golden.npz", **golden)
    print({k: v.shape for k, v in golden.items()})
    print("distinct codes:", {k: len(np.unique(v)) for k, v in golden.items() if "codes" in k})


if __name__ == "__main__":
    main()
