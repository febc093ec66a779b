"""RQ-Transformer (1.4B) on ImageNet 256x256 (TPU pod slice) over an 8x8x4 RQ-VAE.

Follows configs/imagenet256/stage2/in256-rqtransformer-8x8x4-1400M.yaml: global batch 2048,
AdamW (b2 0.95, wd 1e-4), lr 5e-4, grad clip 1, 100 epochs; sampling with top-p 0.92.
Usage: python experiments/train_generator.py --config experiments/configs/rq_imagenet.py \
    --workdir gs://BUCKET/rq_1.4b --set tokenizer_workdir=gs://BUCKET/rqvae_8x8x4
"""

import ml_collections

STEPS = 100 * 1_281_167 // 2048  # 100 epochs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="tfds", tfds_name="imagenet2012", image_size=256, channels=3,
                  batch_size=2048, seed=0)  # fmt: skip
    c.tokenizer_workdir = "gs://BUCKET/rqvae_8x8x4"
    # Codes are extracted once (experiments/extract_codes.py, or by train_generator when
    # missing) to ArrayRecord shards; RQ-Transformer trains with random flips.
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/codes/rq_imagenet
    c.codes = dict(augment="flip", crop_range=1.1, shard_size=1024, batch_size=256,
                   read_threads=16, cache_dir=None)  # fmt: skip
    c.model = dict(family="rq", preset="RQ-1.4B", dtype="bfloat16")
    c.loss = dict()
    c.train = dict(
        num_steps=STEPS, log_every=100, checkpoint_every=2000, sample_every=5000,
        keep_checkpoints=3, ema_decay=None, compute_dtype="bfloat16", progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=5e-4, warmup_steps=0, total_steps=STEPS,
                       end_lr_ratio=0.0, weight_decay=1e-4, b2=0.95, grad_clip_norm=1.0),
    )  # fmt: skip
    c.sampling = dict(cfg_scale=1.0, temperature=1.0, top_p=0.92)
    return c
