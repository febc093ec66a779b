"""tpu_setup/tpu.py: the exact commands each dry run prints, input checks, the wait loop."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_DIR = os.path.join(REPO, "tpu_setup")
WHERE = ["--name", "gpt-b", "--zone", "us-central2-b"]
SSH = "gcloud compute tpus tpu-vm ssh gpt-b --zone=us-central2-b --worker=all --command "
QR = "gcloud compute tpus queued-resources"
WORKDIR = "gs://my-bucket/runs/gpt-b"
CONFIG = "experiments/configs/llamagen_b.py"


def _load_tpu():
    spec = importlib.util.spec_from_file_location("tpu_cli", os.path.join(TPU_DIR, "tpu.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


tpu = _load_tpu()
REAL_RUN = subprocess.run  # tpu.subprocess is this module: patched below, kept here


@pytest.fixture(autouse=True)
def no_real_commands(monkeypatch):
    """Nothing here may reach gcloud; tests that exercise running install a fake."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run tried to run {args}")

    monkeypatch.setattr(tpu.subprocess, "run", refuse)


def dry(capsys, command, *argv) -> list[str]:
    """Printed lines of `tpu.py COMMAND --dry-run ARGV` (before any `--` for the script)."""
    assert tpu.main([command, "--dry-run", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def remote(line: str) -> str:
    """The --command string of a printed `gcloud ... ssh` line."""
    argv = shlex.split(line)
    return argv[argv.index("--command") + 1]


@pytest.mark.parametrize(
    "accelerator, runtime",
    [("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-64", "v2-alpha-tpuv5-lite"),
     ("v5p-16", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")],
)  # fmt: skip
def test_create_queued_resource_then_wait(capsys, accelerator, runtime):
    lines = dry(capsys, "create", *WHERE, "--accelerator-type", accelerator, "--spot")
    assert lines == [
        f"{QR} create gpt-b --zone=us-central2-b --node-id=gpt-b "
        f"--accelerator-type={accelerator} --runtime-version={runtime} --spot",
        f"{QR} describe gpt-b --zone=us-central2-b '--format=value(state.state)'",
    ]


def test_create_direct_reserved_with_project_and_runtime_override(capsys):
    lines = dry(capsys, "create", *WHERE, "--project", "my-proj-1", "--direct", "--reserved",
                "--accelerator-type", "v4-8", "--runtime-version", "tpu-vm-base")  # fmt: skip
    where = "--zone=us-central2-b --project=my-proj-1"
    assert lines == [
        f"gcloud compute tpus tpu-vm create gpt-b {where} --accelerator-type=v4-8 "
        "--version=tpu-vm-base --reserved",
        f"gcloud compute tpus tpu-vm describe gpt-b {where} '--format=value(state)'",
    ]


def test_install_from_local_ref_archives_copies_then_builds_venv(capsys):
    lines = dry(capsys, "install", *WHERE, "--ref", "v0.1", "--source", "/src/jaxar")
    assert lines[:2] == [
        "git -C /src/jaxar archive --format=tar.gz --output=/tmp/jaxar-v0.1.tar.gz v0.1",
        "gcloud compute tpus tpu-vm scp /tmp/jaxar-v0.1.tar.gz gpt-b:jaxar-src.tar.gz "
        "--zone=us-central2-b --worker=all",
    ]
    assert lines[2].startswith(SSH) and len(lines) == 3
    command = remote(lines[2])
    assert command.startswith("mkdir -p jaxar && tar -xzf jaxar-src.tar.gz -C jaxar && cd jaxar")
    assert command.endswith('.venv/bin/pip install -q -e ".[tpu]"')
    assert "python3 -m venv .venv" in command


def test_install_variants(capsys):
    lines = dry(capsys, "install", *WHERE, "--tarball", "/tmp/mine.tar.gz")
    assert lines[0].startswith("gcloud compute tpus tpu-vm scp /tmp/mine.tar.gz gpt-b:")
    assert len(lines) == 2
    lines = dry(capsys, "install", *WHERE, "--repo-url", "https://example.com/x/jaxar.git",
                "--ref", "main", "--extras", "")  # fmt: skip
    assert len(lines) == 1
    command = remote(lines[0])
    assert "git clone -q https://example.com/x/jaxar.git jaxar" in command
    assert "fetch -q origin main" in command and "checkout -q --detach FETCH_HEAD" in command
    assert command.endswith(".venv/bin/pip install -q -e .")


def test_data_copy_and_gcs_modes(capsys):
    gcs = "gs://my-bucket/tensorflow_datasets"
    lines = dry(capsys, "data", *WHERE, "--gcs-dir", gcs, "--datasets", "imagenet2012")
    assert lines == [
        SSH + "'mkdir -p tensorflow_datasets/imagenet2012 && gcloud storage rsync --recursive "
        "gs://my-bucket/tensorflow_datasets/imagenet2012 tensorflow_datasets/imagenet2012'"
    ]
    assert dry(capsys, "data", *WHERE, "--gcs-dir", gcs, "--mode", "gcs") == [
        "gcloud storage ls gs://my-bucket/tensorflow_datasets/"
    ]


def test_launch_runs_detached_on_all_workers_with_gcs_workdir(capsys):
    lines = dry(capsys, "launch", *WHERE, "--config", CONFIG, "--workdir", WORKDIR,
                "--tfds-data-dir", "gs://my-bucket/tfds", "--", "--note", "two words")  # fmt: skip
    assert len(lines) == 1 and lines[0].startswith(SSH)
    command = remote(lines[0])
    assert command.startswith(
        "mkdir -p jaxar_logs && ln -sfn gpt-b.log jaxar_logs/latest.log && (sudo lsof"
    )
    assert command.endswith(" > jaxar_logs/gpt-b.log 2>&1 < /dev/null &")
    program = command[command.index("exec nohup ") + len("exec nohup ") : command.index(")", -60)]
    assert shlex.split(program) == [
        ".venv/bin/python", "experiments/train_generator.py", "--config", CONFIG,
        "--workdir", WORKDIR, "--note", "two words",
    ]  # fmt: skip
    assert "export TFDS_DATA_DIR=gs://my-bucket/tfds; " in command
    assert "--coordinator" not in command  # TPU workers find each other by themselves


def test_launch_without_killing_and_custom_run_name(capsys):
    (line,) = dry(capsys, "launch", *WHERE, "--workdir", WORKDIR + "/", "--run-name", "try2",
                  "--no-kill-existing", "--script", "experiments/train_tokenizer.py")  # fmt: skip
    assert remote(line) == (
        "mkdir -p jaxar_logs && ln -sfn try2.log jaxar_logs/latest.log && (cd jaxar && exec "
        f"nohup .venv/bin/python experiments/train_tokenizer.py --workdir {WORKDIR}/) "
        "> jaxar_logs/try2.log 2>&1 < /dev/null &"
    )


def test_logs_worker_zero_and_all(capsys):
    assert dry(capsys, "logs", *WHERE) == [
        "gcloud compute tpus tpu-vm ssh gpt-b --zone=us-central2-b --worker=0 --command "
        "'tail -n 100 -F jaxar_logs/latest.log'"
    ]
    (line,) = dry(capsys, "logs", *WHERE, "--worker", "all", "--run-name", "gpt-b", "--no-follow")
    assert line.startswith(SSH)
    assert remote(line) == 'tail -n 100 jaxar_logs/gpt-b.log | sed -u "s/^/[$(hostname)] /"'


def test_resume_waits_for_active_then_relaunches(capsys):
    lines = dry(capsys, "resume", *WHERE, "--config", CONFIG, "--workdir", WORKDIR)
    launch = dry(capsys, "launch", *WHERE, "--config", CONFIG, "--workdir", WORKDIR)
    assert lines == [f"{QR} describe gpt-b --zone=us-central2-b '--format=value(state.state)'"] + (
        launch
    )


def test_resume_recreate_order(capsys):
    lines = dry(capsys, "resume", *WHERE, "--config", CONFIG, "--workdir", WORKDIR, "--recreate",
                "--accelerator-type", "v5litepod-64", "--spot", "--tarball", "/tmp/j.tar.gz",
                "--gcs-dir", "gs://my-bucket/tfds")  # fmt: skip
    assert lines[0] == f"{QR} delete gpt-b --zone=us-central2-b --force --quiet"
    assert lines[1].startswith(f"{QR} create gpt-b ") and "--runtime-version=v2-alpha-tpuv5-lite"
    assert lines[2].startswith(f"{QR} describe gpt-b ")
    assert lines[3].startswith("gcloud compute tpus tpu-vm scp /tmp/j.tar.gz")
    assert "pip install" in remote(lines[4])
    assert "gcloud storage rsync" in remote(lines[5])
    assert "exec nohup" in remote(lines[6]) and len(lines) == 7


def test_teardown_needs_yes(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(tpu.subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(SystemExit) as exit_info:
        tpu.main(["teardown", *WHERE])
    assert exit_info.value.code == 2 and calls == []
    assert "add --yes" in capsys.readouterr().err
    assert dry(capsys, "teardown", *WHERE, "--yes") == [
        f"{QR} delete gpt-b --zone=us-central2-b --force --quiet"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", *WHERE, "--accelerator-type", "v5e-64"], "v5litepod-N"),
        (["create", *WHERE, "--accelerator-type", "v4-30"], "whole host count"),
        (["create", *WHERE, "--accelerator-type", "tpu-8"], "expected <family>-<size>"),
        (["create", "--name", "Bad_Name", "--zone", "us-central2-b", "--accelerator-type", "v4-8"],
         "invalid --name"),
        (["create", "--name", "ok", "--zone", "uscentral", "--accelerator-type", "v4-8"],
         "invalid --zone"),
        (["launch", *WHERE, "--workdir", "/tmp/run"], "gs:// workdir"),
        (["launch", *WHERE, "--workdir", WORKDIR, "--script", "experiments/../../x.py"],
         "inside the repository"),
        (["launch", *WHERE, "--workdir", WORKDIR, "--env", "NOEQUALS"], "KEY=VALUE"),
        (["data", *WHERE, "--gcs-dir", "/local/tfds"], "invalid --gcs-dir"),
        (["install", *WHERE, "--ref=-rf"], "invalid --ref"),
        (["logs", *WHERE, "--worker", "first"], "invalid --worker"),
        (["resume", *WHERE, "--workdir", WORKDIR, "--recreate"], "needs --accelerator-type"),
        (["create", *WHERE, "--accelerator-type", "v4-8", "--spot", "--reserved"], "not allowed"),
    ],
)  # fmt: skip
def test_bad_inputs_exit_with_a_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        tpu.main([argv[0], "--dry-run", *argv[1:]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "accelerator, chips, hosts, devices",
    [("v4-32", 16, 4, 16), ("v4-8", 4, 1, 4), ("v5litepod-64", 64, 16, 64), ("v3-32", 16, 4, 32),
     ("v5litepod-8", 8, 1, 8), ("v6e-16", 16, 4, 16), ("v5p-128", 64, 16, 64)],
)  # fmt: skip
def test_slice_info(capsys, accelerator, chips, hosts, devices):
    assert tpu.main(["info", "--accelerator-type", accelerator]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["chips"], info["hosts"], info["jax_devices"]) == (chips, hosts, devices)


def test_create_polls_until_active(monkeypatch, capsys):
    states = iter(["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])
    calls = []

    def fake_run(argv, check=False, capture_output=False, text=False):
        calls.append(list(argv))
        out = next(states) + "\n" if "describe" in argv else ""
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    monkeypatch.setattr(tpu.subprocess, "run", fake_run)
    monkeypatch.setattr(tpu.time, "sleep", lambda s: None)
    tpu.main(["create", *WHERE, "--accelerator-type", "v4-32"])
    assert [c[4] for c in calls] == ["create", "describe", "describe", "describe"]
    assert "state ACTIVE" in capsys.readouterr().err


def test_wait_stops_on_failure(monkeypatch):
    monkeypatch.setattr(
        tpu.subprocess, "run",
        lambda argv, **k: subprocess.CompletedProcess(argv, 0, stdout="SUSPENDED\n", stderr=""),
    )  # fmt: skip
    monkeypatch.setattr(tpu.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match="SUSPENDED"):
        tpu.main(["resume", *WHERE, "--workdir", WORKDIR])


@pytest.mark.parametrize("name", ["create", "install", "launch", "logs", "teardown"])
def test_shell_wrappers_forward_to_tpu_py(name, capsys):
    extra = {
        "create": ["--accelerator-type", "v4-8"],
        "launch": ["--workdir", WORKDIR],
        "teardown": ["--yes"],
    }.get(name, [])
    argv = [*WHERE, *extra, "--dry-run"]
    out = REAL_RUN(
        ["bash", os.path.join(TPU_DIR, f"{name}.sh"), *argv],
        capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=""),
    ).stdout  # fmt: skip
    assert tpu.main([name, *argv]) == 0
    assert out == capsys.readouterr().out and out.strip()
