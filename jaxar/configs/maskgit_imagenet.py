"""MaskGIT on ImageNet 256x256 (TPU pod slice) over a 16x16 grid of 1024 VQ codes.

Follows MaskGIT's class-conditional recipe: 24 layers, width 768, 16 heads, global batch 256,
AdamW (b1 0.9, b2 0.96, wd 0.045), lr 1e-4 with warmup, label smoothing 0.1, dropout 0.1,
cosine training mask schedule, 300 epochs; decoding in 8 steps with choice temperature 4.5.
Usage: python experiments/train_generator.py --config experiments/configs/maskgit_imagenet.py \
    --workdir gs://BUCKET/maskgit --set tokenizer_workdir=gs://BUCKET/vq_f16_1024
"""

import ml_collections

STEPS = 300 * 1_281_167 // 256  # 300 epochs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="tfds", tfds_name="imagenet2012", image_size=256, channels=3,
                  batch_size=256, seed=0)  # fmt: skip
    c.tokenizer_workdir = "gs://BUCKET/vq_f16_1024"
    # Codes are extracted once (experiments/extract_codes.py, or by train_generator when
    # missing) to ArrayRecord shards; MaskGIT trains with random flips.
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/codes/maskgit_imagenet
    c.codes = dict(augment="flip", crop_range=1.1, shard_size=1024, batch_size=256,
                   read_threads=16, cache_dir=None)  # fmt: skip
    c.model = dict(family="maskgit", preset="MaskGIT-ImageNet256", dtype="bfloat16")
    c.loss = dict()
    c.train = dict(
        num_steps=STEPS, log_every=100, checkpoint_every=5000, sample_every=10000,
        keep_checkpoints=3, ema_decay=None, compute_dtype="bfloat16", progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=1e-4, warmup_steps=5000, total_steps=STEPS,
                       end_lr_ratio=0.0, weight_decay=0.045, b2=0.96, grad_clip_norm=1.0),
    )  # fmt: skip
    c.sampling = dict(num_steps=8, choice_temperature=4.5, temperature=1.0, cfg_scale=1.0)
    return c
