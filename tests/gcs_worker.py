"""One step of the gs:// round trip (launched by tests/test_gcs_roundtrip.py, not collected).

    python tests/gcs_worker.py upload LOCAL_DIR gs://bucket/dir
    python tests/gcs_worker.py train IMAGES gs://bucket/tok gs://bucket/gen STEPS [KILL_AT]
    python tests/gcs_worker.py load gs://bucket/gen

``train`` runs ``train_generator`` with every artefact on gs:// (codes, checkpoints, metrics);
with KILL_AT it SIGKILLs itself right after the checkpoint of that step is on storage. ``load``
restores the generator from gs://, samples, and prints ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import codes_setup  # noqa: E402
from etils import epath  # noqa: E402


def upload(local: str, url: str) -> None:
    for folder, _, files in os.walk(local):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), local)
            target = epath.Path(url) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            epath.Path(folder, name).copy(target, overwrite=True)


def train(images: str, tokenizer: str, workdir: str, steps: str, kill_at: str = "") -> None:
    from jaxar.recipes.generator import train_generator
    from jaxar.train import checkpoint

    if kill_at:
        save = checkpoint.Checkpointer.save

        def save_then_die(self, step, *args, **kwargs):
            save(self, step, *args, **kwargs)
            if step == int(kill_at):
                self.wait_until_finished()
                print(f"KILLED after the checkpoint of step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint.Checkpointer.save = save_then_die
    config = codes_setup.generator_config(images, tokenizer, steps=int(steps))
    config.train.checkpoint_every = 2
    config.codes.cache_dir = os.path.join(os.environ["CODES_CACHE"])
    train_generator(config, workdir)


def load(workdir: str) -> None:
    import jax

    from jaxar.data.codes import read_index
    from jaxar.recipes.generator import load_generator
    from jaxar.train.checkpoint import restore_for_eval

    generator = load_generator(workdir)
    out = generator.sample([0, 1, 2], jax.random.key(0))
    codes, images = out.codes, out.images
    _, stored = restore_for_eval(workdir)
    metrics = (epath.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    index = read_index(epath.Path(workdir) / "codes" / "train")
    steps = sorted(int(p.name) for p in (epath.Path(workdir) / "checkpoints").iterdir()
                   if p.name.isdigit())  # fmt: skip
    result = {
        "codes_shape": list(codes.shape),
        "images_shape": list(images.shape),
        "metrics_steps": [json.loads(line)["step"] for line in metrics],
        "checkpoint_steps": steps,
        "tokenizer_ref": stored["tokenizer_ref"]["workdir"],
        "num_examples": index["num_examples"],
        "shards": [s["name"] for s in index["shards"]],
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    command, *args = sys.argv[1:]
    {"upload": upload, "train": train, "load": load}[command](*args)
