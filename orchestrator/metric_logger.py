"""Rank 0's MLflow logging: batched, sent from a background thread, and kept in the run's
storage while the tracking server is away.

Training never waits for MLflow. `log` appends to a list; every couple of seconds the list
goes to a sender thread as one `log_batch` call (a SQLite store costs milliseconds per
call, a server a round trip). When a send fails, the batch goes to the run's spool
(`orchestrator.spool`) and is sent from there once the server is back.

This module does not import MLflow: the sender thread does, and opens the store, while
the first steps train. Both take about two seconds on two busy cores (a SQLite store
checks its schema), which rank 0, and every rank waiting for it at the first
all-reduce, would otherwise spend before its first step.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger(__name__)


class MetricLogger:
    """Buffers metrics on rank 0 and hands them to a sender thread in batches.

    `log` and `tag` cost a list append. Every `flush_every_s` seconds, and on `flush()`,
    what was buffered goes to the sender; `flush()` also waits until the sender has sent
    or spooled it (a validation's figures must be in MLflow or in the spool before a
    scheduler may stop the trial). `notify` hears, once per outage, that the server is
    away and, when it is back, how much was sent from the spool.
    """

    def __init__(self, uri: str, run_id: str, spool_dir: str, flush_every_s: float = 2.0,
                 retry_every_s: float = 30.0, notify: Callable[[str], None] | None = None):
        self._flush_every_s = flush_every_s
        self._pending: list[tuple[str, float, int, int]] = []  # spool.MetricRow
        self._tags: list[tuple[str, str]] = []  # spool.TagRow
        self._last_flush = time.monotonic()
        self._work: queue.Queue = queue.Queue()
        self._failed: Exception | None = None
        threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True,
                         args=(uri, run_id, spool_dir, retry_every_s, notify or log.warning)
                         ).start()

    def last_step(self, key: str) -> int:
        """The last step of `key` in the run (0 if none, or if the store cannot say).
        Asked of the sender thread, behind what it was handed before: MLflow is imported
        there only (one module imported by two threads at once can be seen half made)."""
        answer: Future[int] = Future()
        self._work.put(("last_step", key, answer))
        return answer.result()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        self._pending.extend((k, float(v), now_ms, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self._hand_over()

    def tag(self, key: str, value: str) -> None:
        """A tag, sent with the next batch of metrics."""
        self._tags.append((key, value))

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        """Upload the files of `directory` under `artifact_path` (a copy is taken now; the
        caller may delete `directory`). A file already there under the same name is
        replaced, so a figure redrawn during a run keeps one path."""
        copy = tempfile.mkdtemp(prefix="rnn-orch-artifacts-")
        shutil.copytree(directory, copy, dirs_exist_ok=True)
        self._hand_over()  # figures logged before the files stay before them
        self._work.put(("files", copy, artifact_path))

    def flush(self) -> None:
        """Hand over what is buffered and wait until it is sent or spooled. Raises what
        stopped the sender thread from starting."""
        self._hand_over()
        self._work.join()
        if self._failed is not None:
            raise self._failed

    def _hand_over(self) -> None:
        if self._pending or self._tags:
            self._work.put(("batch", self._pending, self._tags))
            self._pending, self._tags = [], []
        self._last_flush = time.monotonic()

    def _send_forever(self, uri: str, run_id: str, spool_dir: str, retry_every_s: float,
                      notify: Callable[[str], None]) -> None:
        try:
            from orchestrator.spool import Sender  # imports MLflow, on this thread

            sender = Sender(uri, run_id, spool_dir, retry_every_s, notify)
        except Exception as error:  # a spool location pyarrow cannot open: `flush` raises
            sender, self._failed = None, error
        while True:
            item = self._work.get()
            try:
                if sender is None:
                    if item[0] == "last_step":
                        item[2].set_exception(self._failed)
                elif item[0] == "last_step":
                    item[2].set_result(sender.last_step(item[1]))
                else:
                    sender.deliver(item)
            except Exception as error:  # the spool itself failed: say so, keep training
                notify(f"MLflow: could not send or spool a batch: {error}")
            finally:
                if item[0] == "files":
                    shutil.rmtree(item[1], ignore_errors=True)
                self._work.task_done()
