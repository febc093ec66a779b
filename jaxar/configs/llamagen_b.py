"""LlamaGen GPT-B, class-conditional ImageNet 256x256 over the VQ-16 tokenizer (TPU pods).

LlamaGen's recipe: 300 epochs, global batch 256, AdamW lr 1e-4, betas (0.9, 0.95), wd 0.05,
grad clip 1.0, class dropout 0.1, token/resid/ffn dropout 0.1, 16x16 = 256 tokens of a
16384-entry codebook. The tokenizer workdir holds a trained (or converted, see
``jaxar.convert.llamagen_vq``) VQ-16. ``tokens`` lets ``experiments/aot_check.py`` compile the
train step without a tokenizer checkpoint.

    python experiments/train_generator.py --config experiments/configs/llamagen_b.py \
        --workdir gs://BUCKET/runs/gpt-b --set tokenizer_workdir=gs://BUCKET/runs/vq16
"""

import ml_collections

STEPS_PER_EPOCH = 1_281_167 // 256


def get_config(arg: str = "GPT-B") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(
        name="tfds",
        tfds_name="imagenet2012",
        data_dir=None,
        train_split="train",
        test_split="validation",
        image_size=256,
        channels=3,
        batch_size=256,
        seed=0,
        random_flip=True,
        worker_count=8,
        eval_batch_size=256,
    )
    c.tokenizer_workdir = "runs/vq16"
    # Codes are extracted once (experiments/extract_codes.py, or by train_generator when
    # missing) to ArrayRecord shards; LlamaGen extracts ten crops (crop_range 1.1) of every image.
    c.codes_dir = None  # default <workdir>/codes; e.g. gs://BUCKET/codes/llamagen_b
    c.codes = dict(augment="ten_crop", crop_range=1.1, shard_size=1024, batch_size=320,
                   read_threads=16, cache_dir=None)  # fmt: skip
    c.tokens = dict(vocab_size=16384, num_tokens=256)
    c.model = dict(family="gpt", preset=arg or "GPT-B", num_classes=1000)
    c.loss = dict(label_smoothing=0.0)
    steps = 300 * STEPS_PER_EPOCH
    c.train = dict(
        num_steps=steps,
        log_every=100,
        checkpoint_every=5000,
        sample_every=5000,
        keep_checkpoints=3,
        ema_decay=None,
        compute_dtype="bfloat16",
        progress_bar=True,
        strict_restore=False,  # True: a damaged latest checkpoint stops the run
        optimizer=dict(
            learning_rate=1e-4,
            warmup_steps=0,
            total_steps=steps,
            end_lr_ratio=1.0,
            b1=0.9,
            b2=0.95,
            weight_decay=0.05,
            grad_clip_norm=1.0,
        ),
    )
    c.sampling = dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
    return c
