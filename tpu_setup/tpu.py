#!/usr/bin/env python3
"""Cloud TPU VM / pod-slice tooling for jaxar: one CLI, one subcommand per step.

    tpu.py create   --name N --zone Z --accelerator-type v4-32 [--spot|--reserved]
    tpu.py install  --name N --zone Z [--ref main | --tarball F | --repo-url URL]
    tpu.py data     --name N --zone Z --gcs-dir gs://BUCKET/tensorflow_datasets
    tpu.py launch   --name N --zone Z --script experiments/train_generator.py \
                    --config experiments/configs/llamagen_b.py --workdir gs://BUCKET/runs/gpt-b
    tpu.py logs     --name N --zone Z [--worker 0|all]
    tpu.py resume   (launch flags) [--recreate (create + install flags)]
    tpu.py teardown --name N --zone Z --yes
    tpu.py info     --accelerator-type v5litepod-64

Every subcommand takes --dry-run: it prints the commands, one per line, shell-quoted, in order,
instead of running them. Remote paths are relative to the worker's home directory. Processes
on the workers find each other by themselves (``jax.distributed.initialize()`` on TPU), so the
same command line runs on every worker (``--worker=all``). Standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time

GCLOUD_TPU = ("gcloud", "compute", "tpus")
# Runtime (software) versions for JAX, per TPU generation (Cloud TPU "TPU software versions").
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# The size suffix counts TensorCores for v2-v4 and v5p (2 per chip) and chips for v5e / v6e.
CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}
MEGACORE = {"v4", "v5p"}  # one JAX device per chip; v2/v3 expose each core as a device
ACCELERATOR = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$")
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
PROJECT = re.compile(r"^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
GCS = re.compile(r"^gs://[a-z0-9][-_.a-z0-9]{1,221}(/[^\s'\"]*)?$")
REF = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SCRIPT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_/.-]*\.py$")
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=.*$")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR, LOG_DIR, TARBALL_REMOTE = "jaxar", "jaxar_logs", "jaxar-src.tar.gz"
# Free the TPU before launching: kill whatever holds the chips, remove libtpu's lock file.
KILL_EXISTING = (
    "(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u | xargs -r sudo kill -9;"
    " sudo rm -f /tmp/libtpu_lockfile; true)"
)


@dataclasses.dataclass(frozen=True)
class Wait:
    """Poll ``argv`` (which prints a state) until it prints one of ``ready``."""

    argv: tuple[str, ...]
    ready: tuple[str, ...]
    failed: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MayFail:
    """A command whose failure is fine (deleting what may already be gone)."""

    argv: tuple[str, ...]


# ----------------------------------------------------------------------------- validation
def _check(pattern: re.Pattern, value: str, what: str, hint: str = "") -> str:
    if value is None or not pattern.match(value):
        raise ValueError(f"invalid {what} {value!r}{': ' + hint if hint else ''}")
    return value


def slice_info(accelerator_type: str) -> dict:
    """Chips, hosts and JAX devices of an accelerator type such as v4-32 or v5litepod-64."""
    if re.match(r"^v5e-\d+$", accelerator_type or ""):
        raise ValueError(f"invalid accelerator type {accelerator_type!r}: v5e is 'v5litepod-N'")
    match = ACCELERATOR.match(accelerator_type or "")
    if not match:
        raise ValueError(
            f"invalid accelerator type {accelerator_type!r}: expected <family>-<size> with family "
            f"in {sorted(RUNTIME_VERSIONS)}, e.g. v4-32, v5litepod-64, v6e-16"
        )
    family, size = match.group(1), int(match.group(2))
    if size % CORES_PER_CHIP[family]:
        raise ValueError(f"invalid accelerator type {accelerator_type!r}: odd core count")
    chips = size // CORES_PER_CHIP[family]
    single_host = 8 if family in ("v5litepod", "v6e") else 4  # chips one VM can hold
    hosts = 1 if chips <= single_host else chips // 4
    if chips > single_host and chips % 4:
        raise ValueError(f"invalid accelerator type {accelerator_type!r}: not a whole host count")
    devices = chips if family in MEGACORE or CORES_PER_CHIP[family] == 1 else size
    return {
        "accelerator_type": accelerator_type,
        "family": family,
        "chips": chips,
        "hosts": hosts,
        "jax_devices": devices,
        "runtime_version": RUNTIME_VERSIONS[family],
    }


def _location(args) -> list[str]:
    _check(NAME, args.name, "--name", "lowercase letters, digits and '-', starting with a letter")
    _check(ZONE, args.zone, "--zone", "e.g. us-central2-b")
    flags = [f"--zone={args.zone}"]
    if args.project:
        flags.append(f"--project={_check(PROJECT, args.project, '--project')}")
    return flags


def _gcloud(group: str, verb: str, args, *flags: str) -> tuple[str, ...]:
    """``gcloud compute tpus GROUP VERB NAME --zone=Z [--project=P] FLAGS...``."""
    return (*GCLOUD_TPU, group, verb, args.name, *_location(args), *flags)


def _ssh(args, command: str, worker: str = "all") -> tuple[str, ...]:
    if worker != "all" and not worker.isdigit():
        raise ValueError(f"invalid --worker {worker!r}: 'all' or a worker number")
    return _gcloud("tpu-vm", "ssh", args, f"--worker={worker}", "--command", command)


# ----------------------------------------------------------------------------- plans
def plan_create(args) -> list:
    """Queued resource (default) or direct TPU VM create, then wait until usable."""
    info = slice_info(args.accelerator_type)
    runtime = args.runtime_version or info["runtime_version"]
    kind = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
    accelerator = f"--accelerator-type={args.accelerator_type}"
    if args.direct:
        create = _gcloud("tpu-vm", "create", args, accelerator, f"--version={runtime}", *kind)
    else:
        node, version = f"--node-id={args.name}", f"--runtime-version={runtime}"
        create = _gcloud("queued-resources", "create", args, node, accelerator, version, *kind)
    return [create, _wait_ready(args)]


def _wait_ready(args) -> Wait:
    if args.direct:
        describe = _gcloud("tpu-vm", "describe", args, "--format=value(state)")
        return Wait(describe, ("READY",), ("PREEMPTED", "TERMINATED", "STOPPED"))
    describe = _gcloud("queued-resources", "describe", args, "--format=value(state.state)")
    return Wait(describe, ("ACTIVE",), ("FAILED", "SUSPENDED", "SUSPENDING"))


def _venv_and_install(extras: str) -> str:
    _check(re.compile(r"^[a-z0-9_,-]*$"), extras, "--extras")
    spec = f'".[{extras}]"' if extras else "."  # extras are checked: safe inside the quotes
    return (
        f"cd {REMOTE_DIR} && (python3 -m venv .venv || (sudo apt-get update -qq && "
        "sudo apt-get install -y -qq python3-venv && python3 -m venv .venv)) && "
        f".venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e {spec}"
    )


def plan_install(args) -> list:
    """Copy the code at --ref (or a tarball, or clone --repo-url) to every worker, make a venv."""
    _location(args)
    ref = _check(REF, args.ref, "--ref")
    if args.repo_url:
        url = shlex.quote(args.repo_url)
        fetch = (
            f"(test -d {REMOTE_DIR}/.git || git clone -q {url} {REMOTE_DIR}) && "
            f"git -C {REMOTE_DIR} fetch -q origin {ref} && "
            f"git -C {REMOTE_DIR} checkout -q --detach FETCH_HEAD"
        )
        return [_ssh(args, f"{fetch} && {_venv_and_install(args.extras)}")]
    steps = []
    tarball = args.tarball
    if tarball is None:
        tarball = f"/tmp/jaxar-{ref.replace('/', '-')}.tar.gz"
        steps.append(
            ("git", "-C", args.source, "archive", "--format=tar.gz", f"--output={tarball}", ref)
        )
    target = f"{args.name}:{TARBALL_REMOTE}"
    steps.append((*GCLOUD_TPU, "tpu-vm", "scp", tarball, target, *_location(args), "--worker=all"))
    unpack = f"mkdir -p {REMOTE_DIR} && tar -xzf {TARBALL_REMOTE} -C {REMOTE_DIR}"
    steps.append(_ssh(args, f"{unpack} && {_venv_and_install(args.extras)}"))
    return steps


def plan_data(args) -> list:
    """Copy a TFDS directory from GCS to every worker, or only check it is readable."""
    _location(args)
    source = _check(GCS, args.gcs_dir, "--gcs-dir", "a gs://bucket/path TFDS data directory")
    if args.mode == "gcs":  # read in place: launch with --tfds-data-dir gs://...
        return [("gcloud", "storage", "ls", source.rstrip("/") + "/")]
    names = args.datasets or [""]
    copies = []
    for name in names:
        _check(re.compile(r"^[A-Za-z0-9_./-]*$"), name, "--datasets entry")
        src = source.rstrip("/") + (f"/{name}" if name else "")
        dst = args.local_dir + (f"/{name}" if name else "")
        copies.append(
            f"mkdir -p {shlex.quote(dst)} && gcloud storage rsync --recursive "
            f"{shlex.quote(src)} {shlex.quote(dst)}"
        )
    return [_ssh(args, " && ".join(copies))]


def _run_name(args) -> str:
    name = args.run_name or args.workdir.rstrip("/").rsplit("/", 1)[-1]
    return _check(RUN_NAME, name, "--run-name")


def launch_command(args) -> str:
    """The shell line every worker runs: free the TPU, start the script detached, log to file."""
    _check(SCRIPT, args.script, "--script", "a .py path relative to the repository root")
    if ".." in args.script.split("/"):
        raise ValueError(f"invalid --script {args.script!r}: must stay inside the repository")
    _check(GCS, args.workdir, "--workdir", "multi-host runs need a gs:// workdir all workers share")
    env = list(args.env or [])
    if args.tfds_data_dir:
        env.append(f"TFDS_DATA_DIR={args.tfds_data_dir}")
    for item in env:
        _check(ENV_VAR, item, "--env", "KEY=VALUE")
    program = [".venv/bin/python", args.script, "--workdir", args.workdir]
    if args.config:
        program[2:2] = ["--config", args.config]
    program += list(args.script_args or [])
    log = f"{LOG_DIR}/{_run_name(args)}.log"
    exports = "".join(f"export {shlex.quote(item)}; " for item in env)
    parts = [
        f"mkdir -p {LOG_DIR}",
        f"ln -sfn {shlex.quote(_run_name(args) + '.log')} {LOG_DIR}/latest.log",
    ]
    if args.kill_existing:
        parts.append(KILL_EXISTING)
    body = f"(cd {REMOTE_DIR} && {exports}exec nohup {shlex.join(program)})"
    return " && ".join(parts) + f" && {body} > {shlex.quote(log)} 2>&1 < /dev/null &"


def plan_launch(args) -> list:
    return [_ssh(args, launch_command(args))]


def plan_logs(args) -> list:
    """Tail worker 0's log (default), one worker's, or every worker's with a host prefix."""
    log = f"{LOG_DIR}/{_check(RUN_NAME, args.run_name, '--run-name')}.log"
    tail = f"tail -n {int(args.lines)} {'-F' if args.follow else ''} {shlex.quote(log)}"
    tail = " ".join(tail.split())
    if args.worker == "all":
        tail += ' | sed -u "s/^/[$(hostname)] /"'
    return [_ssh(args, tail, worker=args.worker)]


def plan_resume(args) -> list:
    """After a preemption: (optionally recreate + reinstall, then) wait for ACTIVE and relaunch.

    Training picks up from the latest checkpoint in the gs:// workdir by itself.
    """
    launch = plan_launch(args)  # validate the launch first: fail before deleting anything
    steps = []
    if args.recreate:
        steps += [MayFail(step) for step in plan_teardown(args, confirmed=True)]
        steps += plan_create(args)[:1]
        steps.append(_wait_ready(args))
        steps += plan_install(args)
        if args.gcs_dir:
            steps += plan_data(args)
    else:
        steps.append(_wait_ready(args))
    return steps + launch


def plan_teardown(args, confirmed: bool | None = None) -> list:
    confirmed = args.yes if confirmed is None else confirmed
    if not confirmed and not args.dry_run:
        raise ValueError(f"teardown deletes {args.name!r} and everything on it: add --yes")
    if args.direct:
        return [_gcloud("tpu-vm", "delete", args, "--quiet")]
    return [_gcloud("queued-resources", "delete", args, "--force", "--quiet")]


# ----------------------------------------------------------------------------- running
def format_step(step) -> str:
    return shlex.join(step.argv if isinstance(step, (Wait, MayFail)) else step)


def run_steps(steps: list, dry_run: bool, poll_seconds: float = 30, timeout_s: float = 0) -> None:
    """Prints (dry run) or runs each step in order; a Wait polls until ready."""
    for step in steps:
        if dry_run:
            print(format_step(step))
        elif isinstance(step, Wait):
            _wait(step, poll_seconds, timeout_s)
        else:
            print(f"+ {format_step(step)}", file=sys.stderr, flush=True)
            may_fail = isinstance(step, MayFail)
            subprocess.run(step.argv if may_fail else step, check=not may_fail)


def _wait(step: Wait, poll_seconds: float, timeout_s: float) -> None:
    start = time.monotonic()
    while True:
        out = subprocess.run(step.argv, check=False, capture_output=True, text=True)
        state = out.stdout.strip() or f"(no state: {out.stderr.strip()[:200]})"
        print(f"[{time.monotonic() - start:6.0f}s] state {state}", file=sys.stderr, flush=True)
        if state in step.ready:
            return
        if state in step.failed:
            raise RuntimeError(f"TPU is {state}: recreate it (resume --recreate) or tear it down")
        if timeout_s and time.monotonic() - start > timeout_s:
            raise RuntimeError(f"still {state} after {timeout_s:.0f}s")
        time.sleep(poll_seconds)


# ----------------------------------------------------------------------------- command line
def _common(parser: argparse.ArgumentParser, needs_name: bool = True) -> None:
    if needs_name:
        parser.add_argument("--name", required=True, help="TPU (and queued resource) name")
        parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
        parser.add_argument("--project", default=None, help="default: gcloud's configured one")
        parser.add_argument(
            "--direct", action="store_true", help="plain `tpu-vm create/delete`, no queued resource"
        )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def _create_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--accelerator-type", required=required, help="v4-32, v5litepod-64, ...")
    parser.add_argument("--runtime-version", default=None, help="default: per TPU generation")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="Spot capacity (preemptible)")
    kind.add_argument("--reserved", action="store_true", help="use the project's reservation")
    parser.add_argument("--poll-seconds", type=float, default=30.0)
    parser.add_argument("--timeout-minutes", type=float, default=0.0, help="0: wait forever")


def _install_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", default="HEAD", help="git ref to install (default HEAD)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tarball", default=None, help="a local .tar.gz of the repository")
    source.add_argument("--repo-url", default=None, help="clone this URL on the workers instead")
    parser.add_argument("--source", default=REPO_ROOT, help="local checkout for `git archive`")
    parser.add_argument("--extras", default="tpu", help="pip extras (default tpu)")


def _data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--gcs-dir", required=required, help="gs://BUCKET/tensorflow_datasets")
    parser.add_argument(
        "--mode",
        choices=("copy", "gcs"),
        default="copy",
        help="copy to worker disks (default) or read gs:// in place",
    )
    parser.add_argument("--datasets", nargs="*", default=None, help="sub-directories to copy")
    parser.add_argument("--local-dir", default="tensorflow_datasets", help="on each worker")


def _launch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--script", default="experiments/train_generator.py")
    parser.add_argument("--config", default=None, help="config path, e.g. experiments/configs/x.py")
    parser.add_argument("--workdir", required=True, help="gs://BUCKET/runs/NAME (shared)")
    parser.add_argument("--run-name", default=None, help="log name (default: workdir basename)")
    parser.add_argument("--env", action="append", default=None, help="KEY=VALUE, repeatable")
    parser.add_argument("--tfds-data-dir", default=None, help="sets TFDS_DATA_DIR on workers")
    parser.add_argument(
        "--no-kill-existing",
        dest="kill_existing",
        action="store_false",
        help="do not free the TPU from earlier processes first",
    )
    parser.add_argument(
        "script_args", nargs=argparse.REMAINDER, help="after `--`: extra arguments for the script"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpu.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="queued resource / TPU VM, wait until ready")
    _common(p)
    _create_flags(p)
    p = sub.add_parser("install", help="code + venv + pip install on every worker")
    _common(p)
    _install_flags(p)
    p = sub.add_parser("data", help="TFDS data from GCS onto every worker")
    _common(p)
    _data_flags(p)
    p = sub.add_parser("launch", help="start an experiment on every worker")
    _common(p)
    _launch_flags(p)
    p = sub.add_parser("logs", help="tail the run log")
    _common(p)
    p.add_argument("--run-name", default="latest", help="default: the last launched run")
    p.add_argument("--worker", default="0", help="worker number or 'all'")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--no-follow", dest="follow", action="store_false")
    p = sub.add_parser("resume", help="relaunch after preemption (optionally recreate first)")
    _common(p)
    p.add_argument("--recreate", action="store_true", help="delete, create, install, then launch")
    _create_flags(p, required=False)
    _install_flags(p)
    _data_flags(p, required=False)
    _launch_flags(p)
    p = sub.add_parser("teardown", help="delete the queued resource / TPU VM")
    _common(p)
    p.add_argument("--yes", action="store_true", help="really delete")
    p = sub.add_parser("info", help="chips, hosts, devices and runtime of an accelerator type")
    _common(p, needs_name=False)
    p.add_argument("--accelerator-type", required=True)
    return parser


PLANS = {
    "create": plan_create,
    "install": plan_install,
    "data": plan_data,
    "launch": plan_launch,
    "logs": plan_logs,
    "resume": plan_resume,
    "teardown": plan_teardown,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "script_args", None) and args.script_args[0] == "--":
        args.script_args = args.script_args[1:]
    try:
        if args.command == "info":
            print(json.dumps(slice_info(args.accelerator_type), indent=1))
            return 0
        if args.command == "resume" and args.recreate and not args.accelerator_type:
            raise ValueError("resume --recreate needs --accelerator-type (and create flags)")
        steps = PLANS[args.command](args)
    except ValueError as err:
        parser.error(str(err))
    timeout = 60 * getattr(args, "timeout_minutes", 0.0)
    run_steps(steps, args.dry_run, getattr(args, "poll_seconds", 30.0), timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
