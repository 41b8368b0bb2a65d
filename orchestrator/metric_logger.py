"""Rank 0's MLflow logging: batched, sent from a background thread, and kept in the run's
storage while the tracking server is away.

Training never waits for MLflow. `log` appends to a list; every couple of seconds the list
goes to a sender thread as one `log_batch` call (a SQLite store costs milliseconds per
call, a server a round trip). When a send fails, the batch is written to the spool, a
directory beside the run's checkpoints (`<storage_path>/<run name>/mlflow_spool`, on local
disk, NFS or s3://, wherever the checkpoints go), the user is told once, and later batches
go straight to the spool until a retry finds the server again. The spool is then sent
first, in order, so MLflow gets every figure once. What is still spooled when the run ends
is sent by `rnn-orch sync <run directory>` (`send_spooled`).

A sweep's trial that starts while the server is away cannot create its MLflow run. It
trains all the same with the run id "" and keeps what the run is made of (`keep_opening`):
whoever first sends from the spool once the server is back creates the run, and every
entry kept under "" goes to it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.tracking import fail_fast_http, first_line, open_run
from pipelines.tables import filesystem_of

SPOOL_DIR = "mlflow_spool"  # inside the run's directory, beside its checkpoints
ENDING_FILE = "ending.json"  # in the spool: a run whose model is not logged yet
OPENING_FILE = "opening.json"  # in the spool: a run to create when the server is back
OPENED_FILE = "opened.json"  # in the spool: the id of the run created from the opening
_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call

log = logging.getLogger(__name__)


def spool_directory(storage_path: str, run_name: str) -> str:
    return f"{storage_path}/{run_name}/{SPOOL_DIR}"


class Spool:
    """What could not be sent: one JSON file per batch of metrics and tags, one directory
    per upload of files, named so that sorting them restores the order they were made in.

    Each entry says its run and tracking URI, so whoever sends it needs only the
    directory. An entry is claimed by renaming it before it is sent, so two processes
    draining one spool (a sweep trial and its worker) never send it twice.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._filesystem, self._root = filesystem_of(directory)
        self._count = 0

    def add_batch(self, uri: str, run_id: str, metrics: list[Metric],
                  tags: list[RunTag]) -> None:
        entry = {"tracking_uri": uri, "run_id": run_id,
                 "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                 "tags": [[t.key, t.value] for t in tags]}
        self._write(f"{self._next_name()}.json", json.dumps(entry).encode())

    def add_files(self, uri: str, run_id: str, local_dir: str, artifact_path: str) -> None:
        name = self._next_name()
        self._filesystem.create_dir(f"{self._root}/{name}.files")
        pafs.copy_files(local_dir, f"{self._root}/{name}.files",
                        source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self._filesystem)
        entry = {"tracking_uri": uri, "run_id": run_id, "artifact_path": artifact_path}
        self._write(f"{name}.json", json.dumps(entry).encode())  # last: the entry is whole

    def entries(self) -> list[str]:
        """The spooled entries' file names, oldest first."""
        if self._filesystem.get_file_info(self._root).type != pafs.FileType.Directory:
            return []
        found = self._filesystem.get_file_info(pafs.FileSelector(self._root))
        return sorted(name for info in found if info.type == pafs.FileType.File
                      and (name := Path(info.path).name).endswith(".json")
                      and name not in (ENDING_FILE, OPENING_FILE, OPENED_FILE))

    def send(self, uri: str = "") -> int:
        """Send every entry, oldest first, to its run (at `uri` if given, else the URI it
        was spooled for); each is deleted once sent. Returns how many were sent; raises
        the first failure, leaving that entry and the later ones in place."""
        if self._read(OPENING_FILE) is not None:
            self.run_id_for("", uri)  # a run kept to be created is created even if empty
        sent = 0
        for name in self.entries():
            claimed = f"{self._root}/{name}.sending"
            try:
                self._filesystem.move(f"{self._root}/{name}", claimed)
            except FileNotFoundError:
                continue  # another process took it
            try:
                self._send_entry(claimed, name, uri)
            except BaseException:
                self._filesystem.move(claimed, f"{self._root}/{name}")
                raise
            self._filesystem.delete_file(claimed)
            sent += 1
        return sent

    def keep_opening(self, uri: str, experiment: str, run_name: str, params: dict,
                     config_yaml: str, tags: dict[str, str]) -> None:
        """A run that could not be created (`tracking.open_run`'s arguments): the run id
        "" stands for it until `run_id_for` creates it."""
        opening = {"tracking_uri": uri, "experiment": experiment, "run_name": run_name,
                   "params": params, "config_yaml": config_yaml, "tags": tags}
        self._write(OPENING_FILE, json.dumps(opening, default=str).encode())

    def run_id_for(self, run_id: str, uri: str = "") -> str:
        """`run_id`, or for "" the run kept by `keep_opening`, created now (at `uri` if
        given) unless it was already. Raises when the server cannot be reached."""
        if run_id:
            return run_id
        opened = self._read(OPENED_FILE)
        if opened is not None:
            return opened["run_id"]
        opening = self._read(OPENING_FILE)
        if opening is None:
            raise FileNotFoundError(f"{self.directory} keeps no run to create for the "
                                    "entries logged without a run id")
        run_id, _, _ = open_run(uri or opening["tracking_uri"], opening["experiment"],
                                opening["run_name"], opening["params"],
                                opening["config_yaml"], opening["tags"])
        self._write(OPENED_FILE, json.dumps({"run_id": run_id}).encode())
        return run_id

    def tracking_uri(self) -> str:
        """The tracking URI of the oldest entry or of the kept ending ("" if none)."""
        names = self.entries()
        kept = self._read(names[0] if names else ENDING_FILE)
        return kept["tracking_uri"] if kept else ""

    def keep_ending(self, ending: dict) -> None:
        """The end of a run that could not be recorded (which run, which checkpoints):
        `rnn-orch sync` logs its model and closes it (`orchestrator.driver.sync`)."""
        self._write(ENDING_FILE, json.dumps(ending).encode())

    def ending(self) -> dict | None:
        return self._read(ENDING_FILE)

    def drop_ending(self) -> None:
        self._filesystem.delete_file(f"{self._root}/{ENDING_FILE}")

    def _send_entry(self, claimed: str, name: str, uri: str) -> None:
        entry = self._read(Path(claimed).name)
        client = MlflowClient(uri or entry["tracking_uri"])
        run_id = self.run_id_for(entry["run_id"], uri)
        if "artifact_path" not in entry:
            send_batch(client, run_id, [Metric(*metric) for metric in entry["metrics"]],
                       [RunTag(*tag) for tag in entry["tags"]])
            return
        files = f"{self._root}/{name.removesuffix('.json')}.files"
        with tempfile.TemporaryDirectory() as local:
            pafs.copy_files(files, local, source_filesystem=self._filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
            client.log_artifacts(run_id, local, entry["artifact_path"])
        self._filesystem.delete_dir(files)

    def _next_name(self) -> str:
        self._count += 1
        return f"{time.time_ns():020d}-{os.getpid()}-{self._count:06d}"

    def _read(self, name: str) -> dict | None:
        where = f"{self._root}/{name}"
        if self._filesystem.get_file_info(where).type != pafs.FileType.File:
            return None
        with self._filesystem.open_input_stream(where) as stream:
            return json.loads(stream.read())

    def _write(self, name: str, data: bytes) -> None:
        self._filesystem.create_dir(self._root)
        with self._filesystem.open_output_stream(f"{self._root}/{name}") as stream:
            stream.write(data)


def send_batch(client: MlflowClient, run_id: str, metrics: list[Metric],
               tags: list[RunTag]) -> None:
    for start in range(0, len(metrics), _BATCH_LIMIT):
        client.log_batch(run_id, metrics[start:start + _BATCH_LIMIT])
    for start in range(0, len(tags), _BATCH_LIMIT):
        client.log_batch(run_id, tags=tags[start:start + _BATCH_LIMIT])


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
        fail_fast_http()
        self._uri, self._run_id = uri, run_id
        self._client = MlflowClient(uri)
        self._spool = Spool(spool_dir)
        self._flush_every_s, self._retry_every_s = flush_every_s, retry_every_s
        self._notify = notify or log.warning
        self._pending: list[Metric] = []
        self._tags: list[RunTag] = []
        self._last_flush = time.monotonic()
        self._away_since: float | None = None  # when the last send failed; None: reachable
        self._next_try = 0.0
        self._spool_may_hold = True  # entries from an earlier attempt, or from an outage
        self._work: queue.Queue = queue.Queue()
        threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True).start()

    def last_step(self, key: str) -> int:
        """The last step of `key` in the run (0 if none, or if the store cannot say)."""
        try:
            return max((m.step for m in self._client.get_metric_history(self._run_id, key)),
                       default=0)
        except Exception:  # an unreachable store: nothing is known to be there
            return 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now_ms, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self._hand_over()

    def tag(self, key: str, value: str) -> None:
        """A tag, sent with the next batch of metrics."""
        self._tags.append(RunTag(key, value))

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        """Upload the files of `directory` under `artifact_path` (a copy is taken now; the
        caller may delete `directory`). A file already there under the same name is
        replaced, so a figure redrawn during a run keeps one path."""
        copy = tempfile.mkdtemp(prefix="rnn-orch-artifacts-")
        shutil.copytree(directory, copy, dirs_exist_ok=True)
        self._hand_over()  # figures logged before the files stay before them
        self._work.put(("files", copy, artifact_path))

    def flush(self) -> None:
        """Hand over what is buffered and wait until it is sent or spooled."""
        self._hand_over()
        self._work.join()

    def _hand_over(self) -> None:
        if self._pending or self._tags:
            self._work.put(("batch", self._pending, self._tags))
            self._pending, self._tags = [], []
        self._last_flush = time.monotonic()

    def _send_forever(self) -> None:
        while True:
            item = self._work.get()
            try:
                self._deliver(item)
            except Exception as error:  # the spool itself failed: say so, keep training
                self._notify(f"MLflow: could not send or spool a batch: {error}")
            finally:
                if item[0] == "files":
                    shutil.rmtree(item[1], ignore_errors=True)
                self._work.task_done()

    def _deliver(self, item: tuple) -> None:
        if self._away_since is None or time.monotonic() >= self._next_try:
            try:
                self._send_spooled()
                self._send(item)
                return
            except Exception as error:
                self._went_away(error)
        self._keep(item)

    def _send_spooled(self) -> None:
        if not self._spool_may_hold:
            return
        sent = self._spool.send()
        self._spool_may_hold = False
        if self._away_since is not None:
            self._notify(f"MLflow at {self._uri} is back: sent {sent} spooled entries.")
            self._away_since = None

    def _send(self, item: tuple) -> None:
        self._run_id = self._spool.run_id_for(self._run_id)  # a kept run is created first
        if item[0] == "batch":
            send_batch(self._client, self._run_id, item[1], item[2])
        else:
            self._client.log_artifacts(self._run_id, item[1], item[2])

    def _keep(self, item: tuple) -> None:
        self._spool_may_hold = True
        if item[0] == "batch":
            self._spool.add_batch(self._uri, self._run_id, item[1], item[2])
        else:
            self._spool.add_files(self._uri, self._run_id, item[1], item[2])

    def _went_away(self, error: Exception) -> None:
        now = time.monotonic()
        if self._away_since is None:
            self._notify(
                f"MLflow at {self._uri} cannot be reached ({first_line(error)[:200]}). Training "
                f"goes on; metrics and files are kept in {self._spool.directory} and sent "
                "when it is back, or by `rnn-orch sync` on the run's directory.")
            self._away_since = now
        self._next_try = now + self._retry_every_s
