"""The spool: what rank 0 could not send to MLflow, kept in the run's storage until the
tracking server is back.

It is a directory beside the run's checkpoints (`<storage_path>/<run name>/mlflow_spool`,
on local disk, NFS or s3://, wherever the checkpoints go). `MetricLogger` writes to it
while the server is away and sends it first, in order, once a retry finds the server
again, so MLflow gets every figure once. What is still spooled when the run ends is sent
by `rnn-orch sync <run directory>`.

A sweep's trial that starts while the server is away cannot create its MLflow run. It
trains all the same with the run id "" and keeps what the run is made of (`keep_opening`):
whoever first sends from the spool once the server is back creates the run, and every
entry kept under "" goes to it.

Metrics travel as plain (key, value, timestamp in ms, step) tuples and tags as (key,
value): the training thread that makes them does not import MLflow (`metric_logger`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.tracking import fail_fast_http, first_line, open_run
from pipelines.tables import filesystem_of

MetricRow = tuple[str, float, int, int]  # key, value, timestamp (ms), step
TagRow = tuple[str, str]  # key, value

SPOOL_DIR = "mlflow_spool"  # inside the run's directory, beside its checkpoints
ENDING_FILE = "ending.json"  # in the spool: a run whose model is not logged yet
OPENING_FILE = "opening.json"  # in the spool: a run to create when the server is back
OPENED_FILE = "opened.json"  # in the spool: the id of the run created from the opening
_BATCH_LIMIT = 1000  # MLflow accepts at most 1000 metrics per log_batch call


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

    def add_batch(self, uri: str, run_id: str, metrics: list[MetricRow],
                  tags: list[TagRow]) -> None:
        entry = {"tracking_uri": uri, "run_id": run_id,
                 "metrics": [list(metric) for metric in metrics],
                 "tags": [list(tag) for tag in tags]}
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
            send_batch(client, run_id, entry["metrics"], entry["tags"])
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


def send_batch(client: MlflowClient, run_id: str, metrics: list[MetricRow],
               tags: list[TagRow]) -> None:
    for start in range(0, len(metrics), _BATCH_LIMIT):
        chunk = metrics[start:start + _BATCH_LIMIT]
        client.log_batch(run_id, [Metric(*metric) for metric in chunk])
    for start in range(0, len(tags), _BATCH_LIMIT):
        chunk = tags[start:start + _BATCH_LIMIT]
        client.log_batch(run_id, tags=[RunTag(*tag) for tag in chunk])


class Sender:
    """What rank 0's sender thread does with each batch or upload that `MetricLogger`
    hands it: send it, or spool it while the server is away.

    When a send fails, the item is spooled, the user is told once (`notify`), and later
    items go straight to the spool until a retry, `retry_every_s` later, finds the server
    again. The spool is then sent first, in order.
    """

    def __init__(self, uri: str, run_id: str, spool_dir: str, retry_every_s: float,
                 notify: Callable[[str], None]):
        fail_fast_http()
        self._uri, self._run_id = uri, run_id
        self._spool = Spool(spool_dir)
        self._retry_every_s, self._notify = retry_every_s, notify
        self._client: MlflowClient | None = None
        self._away_since: float | None = None  # when the last send failed; None: reachable
        self._next_try = 0.0
        self._spool_may_hold = True  # entries from an earlier attempt, or from an outage
        try:
            self._store()  # opened now, before the first batch arrives
        except Exception as error:
            self._went_away(error)

    def last_step(self, key: str) -> int:
        """The last step of `key` in the run (0 if none, or if the store cannot say)."""
        try:
            return max((m.step for m in self._store().get_metric_history(self._run_id, key)),
                       default=0)
        except Exception:  # an unreachable store: nothing is known to be there
            return 0

    def deliver(self, item: tuple) -> None:
        """Send ("batch", metrics, tags) or ("files", local directory, artifact path), or
        spool it."""
        if self._away_since is None or time.monotonic() >= self._next_try:
            try:
                self._send_spooled()
                self._send(item)
                return
            except Exception as error:
                self._went_away(error)
        self._keep(item)

    def _store(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self._uri)
        return self._client

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
            send_batch(self._store(), self._run_id, item[1], item[2])
        else:
            self._store().log_artifacts(self._run_id, item[1], item[2])

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
