"""The live progress line: rank 0 posts its latest figures, the driver prints them.

Ray Train keeps reports inside its controller, and worker stdout arrives prefixed and
interleaved with Ray's own logs. A tiny actor is the direct route: rank 0 posts a dict
with a fire-and-forget call (at most a few times a second), and a thread in the driver
polls it and redraws one line. Under `ray job submit` (no terminal) it prints one line
per validation instead, so job logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self._latest: dict[str, float] = {}
        self._notes: list[str] = []

    def post(self, figures: dict[str, float]) -> None:
        self._latest.update(figures)

    def note(self, text: str) -> None:
        self._notes.append(text)

    def latest(self) -> tuple[dict[str, float], list[str]]:
        return self._latest, self._notes


def board_on_this_node():
    """A ProgressBoard on the driver's own node, so it lives and dies with the driver: a
    board on a node that is lost mid-run would take the progress line with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ProgressBoard.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()


class ProgressPoster:
    """Rank 0's side: posts to the board at most every `every_s` seconds."""

    def __init__(self, board, every_s: float = 0.5):
        self._board = board
        self._every_s = every_s
        self._last = 0.0

    def post(self, figures: dict[str, float], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._every_s:
            self._board.post.remote(figures)
            self._last = now

    def note(self, text: str) -> None:
        """A line the user must see (a divergence incident), never throttled."""
        self._board.note.remote(text)


def format_line(figures: dict[str, float], total_steps: int) -> str:
    parts = [f"step {int(figures.get('step', 0)):>6}/{total_steps}"]
    for key, label, fmt in (
        ("train_loss", "train", ".4f"),
        ("val_loss", "val", ".4f"),
        ("grad_norm", "|g|", ".3g"),
        ("tokens_per_s", "tok/s", ",.0f"),
    ):
        if key in figures:
            parts.append(f"{label} {figures[key]:{fmt}}")
    return "  ".join(parts)


class ProgressPrinter:
    """Driver side: a daemon thread that polls the board while the `with` block runs."""

    def __init__(self, board, total_steps: int, stream=sys.stdout, every_s: float = 1.0):
        self._board = board
        self._total = total_steps
        self._stream = stream
        self._every_s = every_s
        self._live = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_val_step = None
        self._notes_shown = 0

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._show(ray.get(self._board.latest.remote()))
        if self._live:
            self._stream.write("\n")
        self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._show(ray.get(self._board.latest.remote()))
            except ray.exceptions.RayError:
                return  # the cluster is going away; the driver reports why

    def _show(self, board: tuple[dict[str, float], list[str]]) -> None:
        figures, notes = board
        for note in notes[self._notes_shown:]:
            self._stream.write(("\r" if self._live else "") + f"rnn-orch: {note}".ljust(100)
                               + "\n")
        self._notes_shown = len(notes)
        if not figures:
            return
        line = format_line(figures, self._total)
        if self._live:
            self._stream.write("\r" + line.ljust(100))
        elif figures.get("val_step") != self._last_val_step:
            self._last_val_step = figures.get("val_step")
            self._stream.write(line + "\n")
        self._stream.flush()
