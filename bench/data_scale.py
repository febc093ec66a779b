"""Host memory and throughput of the codes route at two dataset sizes (JPEG folders, 256 px).

    python bench/data_scale.py [--sizes 2000 8000] [--steps 20] [--root /tmp/jaxar_data_scale]

For each size a JPEG folder (10 classes, 256x256, quality 90) is built once, then a fresh
process (so peak RSS is its own) runs: code extraction with a tiny tokenizer of random weights
(width 4, 16x downsampling, 256 tokens of a 1024-entry codebook) through
``jaxar.recipes.extraction.extract_codes``, then ``steps`` training steps of a tiny GPT on
those codes through the real data path (``codes_dataset`` + ``fit``). It also times, on the
first 256 images, the grain decode/resize pipeline alone and the jitted tokenizer alone, to
show where extraction time goes. Prints one JSON object per size and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_SIZE, CLASSES, PROBE = 256, 10, 256


def build_folder(root: str, count: int) -> str:
    """``root/class_k/i.jpg``: smooth random colour fields (JPEG-compressible like photos)."""
    from PIL import Image

    if os.path.exists(os.path.join(root, "done")):
        return root
    rng = np.random.default_rng(count)
    for i in range(count):
        folder = os.path.join(root, f"class_{i % CLASSES}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        image.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    open(os.path.join(root, "done"), "w").close()
    return root


def tiny_tokenizer():
    import jax

    from jaxar.recipes.tokenizer import LoadedTokenizer
    from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig

    cfg = TokenizerConfig(ch=4, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=16,
                          norm_groups=4, codebook_size=1024, code_dim=8)  # fmt: skip
    images = jax.numpy.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    variables = Tokenizer(cfg).init(jax.random.key(0), images, method=Tokenizer.encode_to_codes)
    return LoadedTokenizer(cfg, dict(variables), IMAGE_SIZE, 3)


def bench_config(folder: str, steps: int):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="folder", path=folder, image_size=IMAGE_SIZE, channels=3, batch_size=32,
                  seed=0)  # fmt: skip
    c.codes = dict(augment="none", shard_size=512, batch_size=32, read_threads=2)
    c.model = dict(family="gpt", preset="GPT-tiny", num_layers=2, dim=64, num_heads=2,
                   num_classes=CLASSES)  # fmt: skip
    optimizer = dict(learning_rate=1e-3, warmup_steps=0, total_steps=steps)
    c.train = dict(num_steps=steps, log_every=steps, checkpoint_every=steps, sample_every=0,
                   ema_decay=None, progress_bar=False, optimizer=optimizer)  # fmt: skip
    return c


def _probe_split(source, tokenizer, config) -> dict:
    """Seconds per image of grain decode + resize alone and of the tokenizer alone."""
    from jaxar.data.extract import _shard_batches
    from jaxar.data.transforms import normalize
    from jaxar.recipes.extraction import codes_plan, local_encoder

    plan = {**codes_plan(config, tokenizer, len(source), "train"), "batch_size": 32}
    start = time.perf_counter()
    batches = [b["image"][:, 0] for b in _shard_batches(source, 0, PROBE, plan, 2)[0]]
    decode = (time.perf_counter() - start) / PROBE
    encode, _ = local_encoder(tokenizer)
    encode(normalize(batches[0]))  # compile
    start = time.perf_counter()
    for batch in batches:
        encode(normalize(batch))
    return {"decode_s_per_image": decode,
            "encode_s_per_image": (time.perf_counter() - start) / PROBE}  # fmt: skip


class _Timed:
    """Iterator wrapper recording when each batch is asked for (steps/s after compile)."""

    def __init__(self, iterator):
        self.iterator, self.times = iterator, []

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append(time.perf_counter())
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def child(folder: str, size: int, steps: int, workdir: str) -> dict:
    from jaxar.recipes.config import as_dict, train_config_from
    from jaxar.recipes.extraction import codes_dataset, extract_codes
    from jaxar.recipes.families import get_family
    from jaxar.recipes.images import image_source
    from jaxar.sharding import make_mesh
    from jaxar.train.loop import fit

    tokenizer, config = tiny_tokenizer(), bench_config(folder, steps)
    start = time.perf_counter()
    source = image_source(config.data)
    index_seconds = time.perf_counter() - start
    probe = _probe_split(source, tokenizer, config)
    start = time.perf_counter()
    index = extract_codes(config, tokenizer, os.path.join(workdir, "codes"))
    extract_seconds = time.perf_counter() - start
    rss_after_extraction = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    family = get_family("gpt")
    _, task = family.build(as_dict(config.model), tokenizer, {})
    batches = _Timed(iter(codes_dataset(config, os.path.join(workdir, "codes", "train"))))
    fit(task, batches, config=train_config_from(config), workdir=os.path.join(workdir, "gen"),
        mesh=make_mesh(), rng_seed=0)  # fmt: skip
    # times[0]: the first batch (before compiling); times[1:]: one per later step.
    step_times = np.diff(batches.times[1:])
    return {
        "images": size,
        "records": index["num_examples"],
        "index_folder_s": round(index_seconds, 2),
        "extract_s": round(extract_seconds, 2),
        "extract_images_per_s": round(size / extract_seconds, 1),
        "decode_only_images_per_s": round(1 / probe["decode_s_per_image"], 1),
        "tokenizer_only_images_per_s": round(1 / probe["encode_s_per_image"], 1),
        "decode_plus_tokenizer_s_per_image": round(
            probe["decode_s_per_image"] + probe["encode_s_per_image"], 5
        ),
        "extract_s_per_image": round(extract_seconds / size, 5),
        "train_steps": steps,
        "train_steps_per_s": round(len(step_times) / float(step_times.sum()), 2),
        "peak_rss_mb_after_extraction": round(rss_after_extraction, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "jaxar_data_scale"))
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory() as workdir:
            result = child(args.child[0], int(args.child[1]), args.steps, workdir)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    results = []
    for size in args.sizes:
        folder = build_folder(os.path.join(args.root, f"jpeg_{size}"), size)
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        env.pop("XLA_FLAGS", None)  # one CPU device: peak RSS of the plain route
        out = subprocess.run([sys.executable, __file__, "--child", folder, str(size),
                              "--steps", str(args.steps)], env=env, capture_output=True,
                             text=True, check=False)  # fmt: skip
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not lines:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    rss = [r["peak_rss_mb"] for r in results]
    summary = {"sizes": args.sizes, "peak_rss_mb": rss, "peak_rss_spread_mb": max(rss) - min(rss)}
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
