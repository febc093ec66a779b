"""RandAR-L (0.3B) on ImageNet 256x256 (TPU pod slice) over LlamaGen's VQ-16 tokenizer.

Follows RandAR's configs/randar/randar_l_0.3b_llamagen.yaml: global batch 1024, AdamW
(b2 0.95, wd 0.05), lr 4e-4 with 50k warmup steps and decay to 5%, grad clip 1, 360k steps,
random training order; sampling in 88 parallel-decoding steps with linearly ramped CFG.
Usage: python experiments/train_generator.py --config experiments/configs/randar_imagenet.py \
    --workdir gs://BUCKET/randar_l --set tokenizer_workdir=gs://BUCKET/vq_ds16_c2i
"""

import ml_collections

STEPS = 360_000


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="tfds", tfds_name="imagenet2012", image_size=256, channels=3,
                  batch_size=1024, seed=0)  # fmt: skip
    c.tokenizer_workdir = "gs://BUCKET/vq_ds16_c2i"
    # Codes are extracted once (experiments/extract_codes.py, or by train_generator when
    # missing) to ArrayRecord shards; RandAR trains on LlamaGen's ten-crop codes.
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/codes/randar_imagenet
    c.codes = dict(augment="ten_crop", crop_range=1.1, shard_size=1024, batch_size=320,
                   read_threads=16, cache_dir=None)  # fmt: skip
    c.model = dict(family="randar", preset="RandAR-L", dtype="bfloat16")
    c.loss = dict()
    c.train = dict(
        num_steps=STEPS, log_every=100, checkpoint_every=20000, sample_every=20000,
        keep_checkpoints=3, ema_decay=None, compute_dtype="bfloat16", progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=4e-4, warmup_steps=50_000, total_steps=STEPS,
                       end_lr_ratio=0.05, weight_decay=0.05, b2=0.95, grad_clip_norm=1.0),
    )  # fmt: skip
    c.sampling = dict(order="random", num_inference_steps=88, cfg_scale=4.0,
                      cfg_schedule="linear", temperature=1.0)  # fmt: skip
    return c
