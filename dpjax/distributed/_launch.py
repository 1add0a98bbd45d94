"""Starting a run of several processes: the environment contract and a localhost launcher (host)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import dpjax
from dpjax import _validation
from dpjax.distributed._multihost import initialize

#: The environment variables a process of a multi-process run reads (:func:`from_environment`).
ENV_COORDINATOR = "DPJAX_COORDINATOR"
ENV_NUM_PROCESSES = "DPJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DPJAX_PROCESS_ID"
ENV_SAMPLER_SEED = "DPJAX_SAMPLER_SEED"
ENV_NOISE_SEED = "DPJAX_NOISE_SEED"


@dataclasses.dataclass(frozen=True)
class RunEnvironment:
    """What one process of a (possibly multi-process) run knows about the run.

    Attributes:
      num_processes: the number of processes (1 for a single-process run).
      process_id: this process's index, 0 on the coordinator.
      sampler_seed: the Poisson sampler's seed, the SAME on every process.
      noise_seed: the noise key's seed (`dpjax.key_from_seed`), the SAME on
        every process.

    **Privacy:** both seeds are secrets: whoever learns the sampler seed knows
    which examples were in each batch, and whoever learns the noise seed can
    subtract the noise from every released update. Never log them; this
    record's `repr` hides them, and it is not a tuple, so `json.dumps` refuses
    it instead of writing them.
    """

    num_processes: int
    process_id: int
    sampler_seed: int = dataclasses.field(repr=False)
    noise_seed: int = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return (
            f"RunEnvironment(num_processes={self.num_processes}, process_id={self.process_id}, "
            "sampler_seed=<secret>, noise_seed=<secret>)"
        )


def _seed_from(env: Mapping[str, str], name: str) -> int:
    if name not in env:
        raise ValueError(
            f"{name} is not set, but {ENV_COORDINATOR} is: every process of a multi-process run "
            f"needs the SAME secret {name}; start the processes with "
            "`python -m dpjax.distributed` (it draws one), or set it on every host."
        )
    text = env[name]
    if not text.isdigit():
        raise ValueError(
            f"{name}={text!r} is not a non-negative integer; draw one with "
            '`python -c "import dpjax; print(dpjax.secret_seed())"`.'
        )
    return _validation.check_seed(int(text), name)


def from_environment(environ: Mapping[str, str] | None = None) -> RunEnvironment:
    """Joins the multi-process run described by the environment, or runs alone.

    With `DPJAX_COORDINATOR` (`host:port` of process 0) set, reads
    `DPJAX_NUM_PROCESSES`, `DPJAX_PROCESS_ID`, `DPJAX_SAMPLER_SEED` and
    `DPJAX_NOISE_SEED`, and calls :func:`dpjax.distributed.initialize` (so call
    this first, before anything touches a device). Without it, the run is one
    process; a seed variable that is set is used (reproducible research), and
    a missing one is a fresh secret from the operating system
    (:func:`dpjax.secret_seed`).

    Args:
      environ: the environment to read; None for `os.environ`.

    Returns:
      A :class:`RunEnvironment`.

    Raises:
      ValueError: if the coordinator is set but a variable is missing or
        malformed (the message names it).

    Example:
      >>> import dpjax.distributed as dd
      >>> run = dd.from_environment({})  # no coordinator: one process, fresh secret seeds
      >>> run.num_processes, run.process_id, run
      (1, 0, RunEnvironment(num_processes=1, process_id=0, sampler_seed=<secret>, noise_seed=<secret>))

    **Privacy:** the seeds must be the same on every process (one global batch,
    one noise draw) and secret; see :class:`RunEnvironment`.
    """
    env = os.environ if environ is None else environ
    if ENV_COORDINATOR not in env:  # one process: the seeds if given (research), else secret
        return RunEnvironment(
            1,
            0,
            _seed_from(env, ENV_SAMPLER_SEED) if ENV_SAMPLER_SEED in env else dpjax.secret_seed(),
            _seed_from(env, ENV_NOISE_SEED) if ENV_NOISE_SEED in env else dpjax.secret_seed(),
        )
    for name in (ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        if not env.get(name, "").isdigit():
            raise ValueError(
                f"{name}={env.get(name)!r} must be a non-negative integer when "
                f"{ENV_COORDINATOR} is set (the number of processes and this process's index)."
            )
    run = RunEnvironment(
        int(env[ENV_NUM_PROCESSES]),
        int(env[ENV_PROCESS_ID]),
        _seed_from(env, ENV_SAMPLER_SEED),
        _seed_from(env, ENV_NOISE_SEED),
    )
    initialize(env[ENV_COORDINATOR], run.num_processes, run.process_id)
    return run


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(
    command: Sequence[str],
    num_processes: int,
    *,
    seeds: tuple[int, int] | None = None,
    devices_per_process: int | None = None,
    environment: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> list[int]:
    """Runs `command` as `num_processes` processes of one run on this machine.

    Each process gets the environment of :func:`from_environment`: a free
    localhost port as the coordinator, its index, and the same two seeds. Use
    it to test a multi-host script on one machine (CPU devices, Gloo), or to
    run one process per accelerator of one host. On a cluster, start one
    process per host with the same variables instead (README, "Several
    hosts"). If a process fails, the others are stopped.

    Args:
      command: the program and its arguments, e.g. `["python", "train.py"]`.
      num_processes: how many processes, >= 1.
      seeds: `(sampler_seed, noise_seed)`; None draws both from the operating
        system (:func:`dpjax.secret_seed`). Pass them only for reproducible
        research.
      devices_per_process: on CPU, the number of host devices each process
        exposes (`--xla_force_host_platform_device_count`); None leaves
        `XLA_FLAGS` as it is.
      environment: further variables for every process (e.g.
        `{"JAX_PLATFORMS": "cpu"}`), on top of this process's environment.
      timeout: seconds to wait for every process; None waits forever.

    Returns:
      The processes' exit codes, in process order.

    Raises:
      ValueError: if `command` is empty, `num_processes` or
        `devices_per_process` is not a positive integer, or a seed is invalid.
      subprocess.TimeoutExpired: if `timeout` passes (every process is killed).

    Example:
      >>> import sys, dpjax.distributed as dd
      >>> dd.launch_local([sys.executable, "-c", "pass"], 2)
      [0, 0]

    **Privacy:** the seeds reach the processes through their environment,
    which other processes of the same user on this machine can read; on a
    shared machine hand them over another way.
    """
    command = list(command)
    if not command or not all(isinstance(c, str) for c in command):
        raise ValueError(
            f"command={command!r} must be a non-empty list of strings, e.g. "
            "[sys.executable, 'train.py']."
        )
    n = _validation.check_positive_int(num_processes, "num_processes", "2")
    sampler_seed, noise_seed = (
        (dpjax.secret_seed(), dpjax.secret_seed()) if seeds is None else seeds
    )
    env = dict(os.environ) | dict(environment or {})
    if devices_per_process is not None:
        per = _validation.check_positive_int(devices_per_process, "devices_per_process", "2")
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={per}"])
    env |= {
        ENV_COORDINATOR: f"127.0.0.1:{_free_port()}",
        ENV_NUM_PROCESSES: str(n),
        ENV_SAMPLER_SEED: str(_validation.check_seed(sampler_seed, "seeds[0]")),
        ENV_NOISE_SEED: str(_validation.check_seed(noise_seed, "seeds[1]")),
    }
    procs = [subprocess.Popen(command, env=env | {ENV_PROCESS_ID: str(i)}) for i in range(n)]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]  # every process, each time
            if None not in codes or any(c not in (None, 0) for c in codes):
                break  # all done, or one failed: the others would wait for it forever
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(command, float(timeout or 0))
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [int(p.returncode) for p in procs]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dpjax.distributed -n N [--devices-per-process D] -- COMMAND...`.

    Args:
      argv: the arguments after the module name (default: `sys.argv[1:]`).

    Returns:
      0 if every process exited with 0, else the first non-zero exit code.

    Example:
      >>> import sys
      >>> main(["-n", "2", "--", sys.executable, "-c", "pass"])
      0
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dpjax.distributed",
        description="Run COMMAND as N processes of one dpjax run on this machine (fresh secret "
        "seeds, a localhost coordinator). On a cluster, start one process per host with the "
        "DPJAX_* variables instead.",
    )
    parser.add_argument("-n", "--num-processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        codes = launch_local(
            command, args.num_processes, devices_per_process=args.devices_per_process
        )
    except ValueError as err:
        print(f"python -m dpjax.distributed: error: {err}", file=sys.stderr)
        return 2
    return next((c for c in codes if c), 0)
