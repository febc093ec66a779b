"""VAR-d16 on ImageNet 256x256 (TPU pod slice), over VAR's released VQVAE (vae_ch160v4096z32).

Follows VAR's recipe for d16: global batch 768, AdamW (b2 0.95, wd 0.05), lr 1e-4 * bs / 256,
grad clip 2, 200 epochs, linear decay; cfg 1.5 (ramped over scales), top-k 900, top-p 0.96.
Usage: python experiments/train_generator.py --config experiments/configs/var_d16.py \
    --workdir gs://BUCKET/var_d16 --set tokenizer_workdir=gs://BUCKET/vae_ch160v4096z32
"""

import ml_collections

STEPS = 200 * 1_281_167 // 768  # 200 epochs


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="tfds", tfds_name="imagenet2012", data_dir=None, train_split="train",
                  image_size=256, channels=3, batch_size=768, seed=0)  # fmt: skip
    c.tokenizer_workdir = "gs://BUCKET/vae_ch160v4096z32"
    # Codes are extracted once (experiments/extract_codes.py, or by train_generator when
    # missing) to ArrayRecord shards; VAR trains with random flips.
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/codes/var_d16
    c.codes = dict(augment="flip", crop_range=1.1, shard_size=1024, batch_size=256,
                   read_threads=16, cache_dir=None)  # fmt: skip
    c.model = dict(family="var", preset="VAR-d16", dtype="bfloat16")
    c.loss = dict(label_smoothing=0.0)
    c.train = dict(
        num_steps=STEPS, log_every=100, checkpoint_every=5000, sample_every=10000,
        keep_checkpoints=3, ema_decay=None, compute_dtype="bfloat16", progress_bar=False,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(learning_rate=1e-4 * 768 / 256, warmup_steps=STEPS // 50,
                       total_steps=STEPS, end_lr_ratio=0.01, weight_decay=0.05, b2=0.95,
                       grad_clip_norm=2.0),
    )  # fmt: skip
    # cfg_scale 2.5 = VAR's cfg=1.5 (jaxar: 1 = no guidance), ramped over the scales as in VAR
    c.sampling = dict(cfg_scale=2.5, cfg_schedule="linear", temperature=1.0, top_k=900, top_p=0.96)
    return c
