"""gs:// end to end against a local GCS emulator (PyPI ``gcp-storage-emulator``) on 127.0.0.1:
extract codes, train, SIGKILL, resume, ``load_generator`` and sample, with the tokenizer, the
codes, the checkpoints and the metrics all on ``gs://bucket/...``.

Settings that point each client at the emulator (see docs/DATA.md):
- epath's gs:// backend (fsspec / gcsfs): ``STORAGE_EMULATOR_HOST``, anonymous
  ``FSSPEC_GCS_TOKEN=anon``, and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (else gcsfs asks
  the storage-control gRPC API for the bucket type, which the emulator lacks: 60 s timeouts);
- orbax / tensorstore: ``TENSORSTORE_GCS_HTTP_URL`` and ``GOOGLE_AUTH_TOKEN_FOR_TESTING``;
- ArrayRecord (grain's reader) opens local files only: gs:// codes are copied to
  ``codes.cache_dir`` first (by ``jaxar.data.codes``), which this test exercises.

The emulator's media downloads lack the ``x-goog-generation`` header that real GCS sends, so
tensorstore caches generation 0 and its next revalidating read of an OCDBT manifest fails with
"Malformed StorageGeneration" (only when a cache entry goes stale: a CI flake under load). The
fixture adds the header, as real GCS does; ``test_emulator_revalidates_ocdbt`` pins that down.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import codes_setup
import pytest

emulator = pytest.importorskip("gcp_storage_emulator.server", reason="pip install .[test]")
from gcp_storage_emulator.handlers import objects as emulator_objects  # noqa: E402

pytest.importorskip("gcsfs", reason="pip install .[test]")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "gcs_worker.py")


def _serve_generation_headers(monkeypatch):
    """Media downloads carry the object's generation headers, as real GCS responses do."""
    download = emulator_objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value in (200, 206):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])

    # The JSON API's ``GET .../o/NAME?alt=media`` (tensorstore's read) looks ``download`` up here.
    monkeypatch.setattr(emulator_objects, "download", download_with_generation)


@pytest.fixture()
def gcs_env(tmp_path, monkeypatch):
    _serve_generation_headers(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=url,
               FSSPEC_GCS_TOKEN="anon", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
               TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
               CODES_CACHE=str(tmp_path / "codes_cache"))  # fmt: skip
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    try:
        yield env
    finally:
        server.stop()


def _run(env, *args, expect_rc: int = 0) -> str:
    proc = subprocess.run([sys.executable, WORKER, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == expect_rc, output[-4000:]
    return output


@pytest.mark.slow
def test_extract_train_kill_resume_load_sample_on_gs(gcs_env, tmp_path_factory):
    images, tokenizer = codes_setup.shared_setup(tmp_path_factory)
    _run(gcs_env, "upload", str(tokenizer), "gs://bucket/tok")
    killed = _run(gcs_env, "train", str(images), "gs://bucket/tok", "gs://bucket/gen", "4", "2",
                  expect_rc=-9)  # fmt: skip
    assert "KILLED after the checkpoint of step 2" in killed
    assert killed.count("wrote gs://bucket/gen/codes/train/shard-") == 4  # extracted to gs://
    resumed = _run(gcs_env, "train", str(images), "gs://bucket/tok", "gs://bucket/gen", "4")
    assert "resumed from step 2" in resumed, resumed[-3000:]
    assert "wrote gs://" not in resumed  # codes on gs:// were reused, not extracted again
    out = _run(gcs_env, "load", "gs://bucket/gen")
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["codes_shape"] == [3, 64] and result["images_shape"] == [3, 16, 16, 1]
    assert result["checkpoint_steps"] == [2, 4]
    assert result["metrics_steps"][-2:] == [3, 4] and 2 in result["metrics_steps"]
    assert result["tokenizer_ref"] == "gs://bucket/tok"
    assert result["num_examples"] == 32 and len(result["shards"]) == 4
    assert not os.path.exists("gs:")  # nothing went to a local folder named gs:


def test_emulator_revalidates_ocdbt(gcs_env, monkeypatch):
    """A second OCDBT reader re-reads a changed manifest (a stale cache entry) without error."""
    ts = pytest.importorskip("tensorstore")
    for key in ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        monkeypatch.setenv(key, gcs_env[key])
    spec = {"driver": "ocdbt", "base": {"driver": "gcs", "bucket": "bucket", "path": "reval/"}}
    writer, reader = ts.KvStore.open(spec).result(), ts.KvStore.open(spec).result()
    writer.write("a", b"1").result()
    assert reader.read("a").result().value == b"1"
    writer.write("b", b"2").result()
    assert reader.read("b", staleness_bound=time.time()).result().value == b"2"
