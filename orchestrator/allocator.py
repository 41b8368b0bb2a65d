"""Training workers keep the memory they free, so that each step reuses the last one's.

Why: a recurrent training step allocates and frees the same large blocks at every step
(the whole sequence's gates, activations and their gradients: tens of MiB for an LSTM
of 256 units on 100 steps of 64 rows). glibc's malloc hands such blocks back to the
kernel when they are freed: a block above its mmap threshold is unmapped, a free heap
top above its trim threshold is trimmed, and a thread other than the main one allocates
from its own arena, whose heaps are at most 64 MiB. The next step then faults the same
memory back in, page by page: for that LSTM on CPU, about 15,000 page faults a step and
a quarter of the step's time.

Ray Train runs the training function in a thread of its worker process, and a running
thread's arena cannot be changed, so the setting has to be in the worker's environment
when the process starts: glibc's tunables for one arena (the main one, which grows
without the 64 MiB bound) and mmap and trim thresholds of 1 GiB. The price is that a
worker's resident memory stays near its peak between steps instead of shrinking.

A `GLIBC_TUNABLES` already in the driver's environment, even an empty one, is left as it
is (and reaches the workers as any variable does). C libraries other than glibc (macOS)
ignore the variable.
"""

from __future__ import annotations

import os

TUNABLES = "GLIBC_TUNABLES"
KEEP_FREED_MEMORY = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=1073741824"
                     ":glibc.malloc.trim_threshold=1073741824")


def worker_runtime_env() -> dict:
    """The runtime environment of every Ray Train worker: glibc's tunables, unless the
    user set their own."""
    if TUNABLES in os.environ:
        return {}
    return {"env_vars": {TUNABLES: KEEP_FREED_MEMORY}}
