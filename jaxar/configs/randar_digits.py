"""RandAR on the bundled digits, over a trained digits VQ tokenizer (CPU).

Usage:
    make demo  # trains the digits VQ tokenizer into runs/demo/tokenizer
    python experiments/train_generator.py --config experiments/configs/randar_digits.py \
        --workdir runs/randar_digits --set tokenizer_workdir=runs/demo/tokenizer
    python experiments/judge_digits.py --workdir runs/randar_digits
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=16, channels=1, batch_size=64, seed=0)
    c.tokenizer_workdir = "runs/demo/tokenizer"
    c.model = dict(
        family="randar", preset="RandAR-digits", class_dropout_prob=0.1, resid_dropout=0.1,
        ffn_dropout=0.1, num_inference_steps=24,
    )  # fmt: skip
    c.loss = dict()
    c.train = dict(
        num_steps=1500, log_every=100, checkpoint_every=500, sample_every=0,
        keep_checkpoints=2, ema_decay=0.995, progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=1e-3, warmup_steps=100, total_steps=1500,
                       weight_decay=0.05, b2=0.95, grad_clip_norm=1.0),
    )  # fmt: skip
    # RandAR's linear CFG ramp (1 -> cfg_scale with the number of tokens decoded), as its
    # ImageNet setting: constant CFG 2 cut recall to 0.60 and diversity to 0.75 on the digits,
    # the ramp keeps 0.88 / 0.91 at 98 % accuracy (bench/RESULTS.md).
    c.sampling = dict(order="random", cfg_scale=2.0, cfg_schedule="linear", temperature=1.0)
    return c
