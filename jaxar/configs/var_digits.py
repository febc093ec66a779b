"""A small VAR (next-scale prediction) on the bundled digits, over the digits_msvq tokenizer (CPU).

Usage:
    python experiments/train_tokenizer.py --config experiments/configs/tokenizer_digits.py:msvq \
        --workdir runs/tokenizer_digits_msvq
    python experiments/train_generator.py --config experiments/configs/var_digits.py \
        --workdir runs/var_digits --set tokenizer_workdir=runs/tokenizer_digits_msvq
    python experiments/judge_digits.py --workdir runs/var_digits
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=16, channels=1, batch_size=64, seed=0)
    c.tokenizer_workdir = "runs/tokenizer_digits_msvq"
    c.model = dict(family="var", preset="VAR-digits", class_dropout_prob=0.1, drop_path=0.0)
    c.loss = dict(label_smoothing=0.0)
    c.train = dict(
        num_steps=1500, log_every=100, checkpoint_every=500, sample_every=0,
        keep_checkpoints=2, ema_decay=0.995, progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=1e-3, warmup_steps=100, total_steps=1500,
                       weight_decay=0.05, b2=0.95, grad_clip_norm=2.0),
    )  # fmt: skip
    # guidance ramps from 1 at the first scale to cfg_scale at the last (VAR's schedule)
    c.sampling = dict(cfg_scale=3.0, cfg_schedule="linear", temperature=1.0, top_k=0, top_p=1.0)
    return c
