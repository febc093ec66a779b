"""Tokenizers at ImageNet 256x256 (TPU pods), LlamaGen's VQ-16 recipe with a choice of quantizer.

The argument picks the quantizer: vq16 (default; LlamaGen VQ-16, 16384 x 8 l2-normalised
codes), fsq, lfq, ibq, rq (depth 4), msvq (VAR's multi-scale VQ, 4096 x 32 codes, scales
1..16). LlamaGen trains 40 epochs at batch 128, lr 1e-4, betas (0.9, 0.95), with LPIPS weight
1.0 and a PatchGAN (weight 0.5) from step 20k. ``loss.lpips_path`` must point at LPIPS
weights converted with ``python -m jaxar.convert.lpips``.
"""

import ml_collections

STEPS_PER_EPOCH = 1_281_167 // 128
QUANTIZERS = {
    "vq16": dict(preset="vq16"),
    "fsq": dict(preset="vq16", quantizer="fsq", fsq_levels=(8, 8, 8, 5, 5, 5)),
    "lfq": dict(preset="vq16", quantizer="lfq", code_dim=18, entropy_weight=0.1),
    "ibq": dict(preset="vq16", quantizer="ibq", l2_norm=False, code_dim=256),
    "rq": dict(preset="vq16", quantizer="rq", ch_mult=(1, 1, 2, 2, 4, 4), rq_depth=4,
               codebook_size=16384, code_dim=256, l2_norm=False),
    "msvq": dict(preset="vq16", quantizer="msvq", codebook_size=4096, code_dim=32,
                 l2_norm=False, scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)),
}  # fmt: skip


def get_config(arg: str = "vq16") -> ml_collections.ConfigDict:
    arg = arg or "vq16"
    if arg not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {arg!r}; choose from {sorted(QUANTIZERS)}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(
        name="tfds", tfds_name="imagenet2012", data_dir=None, train_split="train",
        test_split="validation", image_size=256, channels=3, batch_size=128, seed=0,
        random_flip=True, worker_count=8, eval_batch_size=128,
    )  # fmt: skip
    c.tokenizer = dict(QUANTIZERS[arg])
    c.loss = dict(
        recon_loss="l2", codebook_weight=1.0, perceptual_weight=1.0,
        lpips_path="weights/lpips_vgg.npz", disc_weight=0.5, disc_start=20000,
        disc_loss="hinge", gen_loss="hinge", adaptive_weight=True,
    )  # fmt: skip
    steps = 40 * STEPS_PER_EPOCH
    c.train = dict(
        num_steps=steps, log_every=100, checkpoint_every=5000, sample_every=5000,
        keep_checkpoints=3, ema_decay=None, compute_dtype="bfloat16", progress_bar=True,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=1e-4, warmup_steps=0, total_steps=steps, end_lr_ratio=1.0,
                       b1=0.9, b2=0.95, weight_decay=0.0, grad_clip_norm=1.0),
    )  # fmt: skip
    c.preview_count = 8
    return c
