"""The machine a benchmark ran on, in one line for its results file: results from shared,
noisy machines only mean something next to the hardware that made them."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

from orchestrator import allocator


def describe() -> str:
    """CPU model, cores, memory, OS and Python, e.g. "AMD EPYC, 2 CPU cores, 25 GB RAM,
    Linux, Python 3.11.7"."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    memory = ""
    if Path("/proc/meminfo").exists():
        total_kb = Path("/proc/meminfo").read_text().split()[1]
        memory = f", {int(total_kb) / 1e6:.0f} GB RAM"
    return (f"{model}, {os.cpu_count()} CPU cores{memory}, {platform.system()}, "
            f"Python {platform.python_version()}")


def results_header(title: str) -> list[str]:
    """A results file's first lines: its title, then the machine, the date and the command
    that made it (this script and its arguments)."""
    command = " ".join([f".venv/bin/python benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    return [f"# {title}", "", f"- Machine: {describe()}",
            f"- Date: {datetime.date.today().isoformat()}", f"- Command: `{command}`"]


def with_workers_malloc() -> str:
    """Run this benchmark under the malloc settings of rnn-orch's training workers
    (`orchestrator.allocator`): glibc reads them only as a process starts, so without a
    GLIBC_TUNABLES in the environment the script starts again with them. A GLIBC_TUNABLES
    already set (`GLIBC_TUNABLES= python ...` for glibc's defaults) is kept. Returns the
    setting in words, for the results file."""
    environment = allocator.worker_runtime_env().get("env_vars", {})
    if environment:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **environment})
    tunables = os.environ[allocator.TUNABLES]
    if tunables == allocator.KEEP_FREED_MEMORY:
        return f"`{allocator.TUNABLES}={tunables}`, as in rnn-orch's training workers"
    return f"`{allocator.TUNABLES}={tunables}`" if tunables else "glibc's defaults"
