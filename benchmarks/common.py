"""Small helpers shared by the benchmarks: machine description, timing, JSON writing."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

_PACKAGES = ("jax", "jaxlib", "numpy", "optax", "flax", "dp-accounting")


def machine_description() -> dict[str, Any]:
    """Where the numbers were measured: host, Python, package versions, JAX devices."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import jax

        devices = jax.devices()
        jax_devices = [f"{d.platform}:{d.device_kind}" for d in devices]
        jax_device = devices[0].device_kind
    except Exception as err:  # a description must never fail the benchmark
        jax_devices, jax_device = [f"unavailable: {err}"], None
    return {
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "jax": versions["jax"],
        "jax_device": jax_device,
        "jax_devices": jax_devices,
        "versions": versions,
    }


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, min and max of timings, in seconds, and how many there were."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "repeats": len(seconds),
    }


def time_call(fn: Callable[[], Any], repeats: int = 3) -> tuple[dict[str, float | int], Any]:
    """Calls ``fn()`` `repeats` times; returns (:func:`summarize` of the times, last result).

    ``fn`` must finish its own work before returning (e.g. ``block_until_ready``).
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return summarize(times), result


def _strict(value: Any) -> Any:
    """Strict JSON values: inf/NaN become null, tuples lists, NumPy scalars Python ones."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> pathlib.Path:
    """Writes ``payload`` as indented strict JSON (inf/NaN -> null), creating the folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_strict(payload), indent=2, default=str, allow_nan=False)
    path.write_text(text + "\n")
    return path


def save_figure(fig: Any, path: str | os.PathLike[str], title: str, dpi: int = 120) -> None:
    """Titles, lays out and writes a matplotlib figure (creating the folder), then closes it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
