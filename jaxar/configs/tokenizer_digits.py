"""Tiny tokenizer on the bundled 16x16 grey digits (CPU, a few minutes).

Usage: python experiments/train_tokenizer.py --config experiments/configs/tokenizer_digits.py:vq
The argument picks the quantizer preset: vq (default), fsq, lfq, ibq, rq, msvq, or kl (a
continuous tokenizer for MAR: 8x8 latents of 4 channels, trained longer; its per-channel
latent scale is measured at the end and stored as <workdir>/latent_scale.json).
"""

import ml_collections


def get_config(arg: str = "vq") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=16, channels=1, batch_size=64, seed=0)
    c.tokenizer = dict(preset=f"digits_{arg or 'vq'}")
    c.loss = dict(recon_loss="l2", codebook_weight=1.0, perceptual_weight=0.0, disc_weight=0.0)
    steps = 1500 if arg == "kl" else 600
    c.train = dict(
        num_steps=steps,
        log_every=100,
        checkpoint_every=300,
        sample_every=300,
        keep_checkpoints=2,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        ema_decay=0.99,
        progress_bar=True,
        optimizer=dict(
            learning_rate=2e-3,
            warmup_steps=50,
            total_steps=steps,
            weight_decay=0.0,
            b2=0.99,
            grad_clip_norm=1.0,
        ),
    )
    c.preview_count = 16
    return c
