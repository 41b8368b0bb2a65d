"""Where a multi-node run may keep its files.

The checkpoints of a run are written by rank 0, wherever it lands, and read back after a
restart, which may land on another node; with a SQLite MLflow store every logging
process opens the same file. On a cluster of several nodes a plain local path names a
different disk on each node, and the run would fail late, after its first restart, with a
missing-file error from inside Ray. Such a path is refused before anything starts, unless
it is on a network filesystem (NFS, SMB, Lustre, a FUSE mount of a bucket, ...) or is
written as a file:// URI, which states that every node mounts it at that path.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import ConfigError

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph",
                       "glusterfs", "beegfs", "9p", "afs", "fuse")  # fuse.gcsfuse, fuse.s3fs...
_SQLITE = "sqlite:///"


def mount_type(path: str, mounts: str) -> str:
    """The filesystem type of the mount that holds `path`, from the text of /proc/mounts."""
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def shared(path: str, mounts: str) -> bool:
    """Whether every node can reach `path`: a URI (s3://, gs://, file://) or a path on a
    network filesystem."""
    return "://" in path or mount_type(path, mounts).split(".")[0] in NETWORK_FILESYSTEMS


def check(storage_path: str, tracking_uri: str, multi_node: bool, mounts: str) -> None:
    """Refuse node-local storage for a run on a cluster of several nodes (ConfigError)."""
    if not multi_node:
        return
    if not shared(storage_path, mounts):
        raise ConfigError(
            f"run.storage_path {storage_path} is on this node's own disk "
            f"({mount_type(storage_path, mounts) or 'unknown'} filesystem), but the run's "
            "workers train on other nodes of this Ray cluster (or will, as an elastic run "
            "grows), which would not find its checkpoints after a restart. Expected "
            "s3://..., gs://..., a path on NFS (or another network filesystem) mounted on "
            "every node, or file:///<path> to state that every node mounts that path.")
    if tracking_uri.startswith(_SQLITE):
        database = str(Path(tracking_uri[len(_SQLITE):]))
        if not shared(database, mounts):
            raise ConfigError(
                f"tracking.uri {tracking_uri} is a SQLite file on this node's own disk, but "
                "the run's workers train on other nodes of this Ray cluster (or will, as an "
                "elastic run grows) and log to it too. "
                "Expected http://<mlflow server> (or MLFLOW_TRACKING_URI), or a SQLite file "
                "on a network filesystem mounted on every node.")
