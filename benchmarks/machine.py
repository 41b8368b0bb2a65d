"""The machine a benchmark ran on, in one line for its results file: results from shared,
noisy machines only mean something next to the hardware that made them."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path


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
