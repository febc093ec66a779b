"""MAR on ImageNet 256x256 (TPU pod slice) over MAR's KL-16 VAE latents.

Follows MAR's README / main_mar.py: global batch 2048, AdamW (b2 0.95, wd 0.02), lr = 1e-4 x
batch / 256 = 8e-4 with 100 warmup epochs then constant, grad clip 3, EMA 0.9999, diffusion
batch multiplier 4, 800 epochs for the released MAR-B/L/H; latents of center crops and
their mirror images (MAR's cached moments), stored as bfloat16. The argument picks the
preset: B (default), L or H. Sampling: 64 masked-AR steps (MAR evaluates with 256), 100 DDPM
steps, linear CFG (MAR-B 2.9, MAR-L 3.0, MAR-H 3.2).
Usage:
    python -m jaxar.convert.mar_vae --vae kl16.ckpt --workdir gs://BUCKET/kl16
    python experiments/train_generator.py --config experiments/configs/mar_imagenet.py:B \
        --workdir gs://BUCKET/mar_b --set tokenizer_workdir=gs://BUCKET/kl16
    python experiments/aot_check.py --config jaxar/configs/mar_imagenet.py:B --data 64
"""

import ml_collections

EPOCH = 1_281_167 // 2048
STEPS, WARMUP = 800 * EPOCH, 100 * EPOCH
CFG = {"B": 2.9, "L": 3.0, "H": 3.2}


def get_config(arg: str = "B") -> ml_collections.ConfigDict:
    size = (arg or "B").upper()
    if size not in CFG:
        raise ValueError(f"mar_imagenet: unknown size {arg!r}; accepted: {sorted(CFG)}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="tfds", tfds_name="imagenet2012", image_size=256, channels=3,
                  batch_size=2048, seed=0)  # fmt: skip
    c.tokenizer_workdir = "gs://BUCKET/kl16"
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/latents/kl16_flip
    c.codes = dict(augment="flip", shard_size=1024, batch_size=256, read_threads=16,
                   cache_dir=None, latent_dtype="bfloat16")  # fmt: skip
    c.model = dict(family="mar", preset=f"MAR-{size}", dtype="bfloat16")
    c.loss = dict()
    c.train = dict(
        num_steps=STEPS, log_every=100, checkpoint_every=10000, sample_every=0,
        keep_checkpoints=3, ema_decay=0.9999, compute_dtype="bfloat16", progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=8e-4, warmup_steps=WARMUP, total_steps=STEPS,
                       end_lr_ratio=1.0, weight_decay=0.02, b2=0.95, grad_clip_norm=3.0),
    )  # fmt: skip
    c.tokens = dict(num_tokens=256, latent_dim=16)  # KL-16 at 256 px, for aot_check.py only
    c.sampling = dict(num_iter=64, num_sampling_steps=100, cfg_scale=CFG[size],
                      cfg_schedule="linear", temperature=1.0)  # fmt: skip
    return c
