"""Timers, process memory, summary statistics and the command line shared by the benchmarks."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import torch


def clock() -> float:
    """The process's CPU time (all its threads). With a fixed number of torch threads this is the
    work done, and unlike wall time it barely moves when other processes load the machine."""
    return time.process_time()


class Timers:
    """Accumulated `clock()` seconds per named region. CPU work is synchronous, so the time around a
    call is that call's cost. Regions must not nest (each second is counted once)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = clock()
        try:
            yield
        finally:
            self.total[name] += clock() - start

    def wrap(self, name: str | Callable[[], str], fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self(name() if callable(name) else name):
                return fn(*args, **kwargs)
        return timed

    def snapshot(self) -> dict[str, float]:
        return dict(self.total)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


@contextlib.contextmanager
def patched(owner: Any, attribute: str, replacement: Any) -> Iterator[None]:
    original = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


# -- memory -----------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    return int(match.group(1)) if match else -1


def rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """Peak resident set size (VmHWM) since start or since `reset_peak_rss`, in MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5). False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- statistics ---------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def fmt(s: dict[str, float], digits: int = 2, unit: str = "") -> str:
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


# -- machine ------------------------------------------------------------------------------------
def machine_description(host: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 1024 / 1024
    except (OSError, AttributeError):
        mem = float("nan")
    try:
        commit = subprocess.run(["git", "-C", host, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "comfyui_commit": commit, "load_average": os.getloadavg()}


def dump_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


# -- command line and memory subprocesses, the same for every stage ---------------------------------
def add_settings_arguments(parser: argparse.ArgumentParser, settings_type: type, memory_default: str) -> None:
    """--memory, --memory-parallel, one int option per field of the stage's Settings dataclass (its
    default as the default), --json, and the hidden --worker that run_memory's subprocesses get."""
    defaults = settings_type()
    parser.add_argument("--memory", default=memory_default, help="variants to measure peak memory of ('' = none)")
    parser.add_argument("--memory-parallel", type=int, default=2, help="memory subprocesses run at once")
    for field in dataclasses.fields(settings_type):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=getattr(defaults, field.name))
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # memory subprocess: one variant


def settings_from(args: argparse.Namespace, settings_type: type) -> Any:
    return settings_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_type)})


def run_memory(stage: str, settings: Any, names: list[str], parallel: int) -> dict[str, Any]:
    """{variant: its memory record}: `bench/run.py <stage> --worker=<variant>` in a fresh process per
    variant (a process's peak RSS only ever grows), `parallel` at a time; each prints its record as JSON."""
    print(f"peak memory, one subprocess per variant ({parallel} at a time): {', '.join(names)} ...", flush=True)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")
    base = [sys.executable, script, stage] + [
        f"--{f.name.replace('_', '-')}={getattr(settings, f.name)}" for f in dataclasses.fields(settings)]

    def one(name: str) -> dict[str, Any]:
        done = subprocess.run(base + [f"--worker={name}"], capture_output=True, text=True, env=os.environ.copy())
        lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"memory worker {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(lines[-1])
        print(f"  {name}: peak {result['peak_mib']:.0f} MiB, +{result['increment_mib']:.0f} MiB over "
              f"{result['baseline_mib']:.0f} MiB after setup", flush=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        results = list(pool.map(one, names))
    return {r["variant"]: r for r in results}
