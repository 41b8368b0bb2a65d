"""Which storage a multi-node run may use, decided from the text of /proc/mounts."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError
from orchestrator.shared_storage import check, mount_type, shared

MOUNTS = """\
overlay / overlay rw,relatime 0 0
/dev/nvme0n1p1 /home ext4 rw 0 0
fs-0a1b.efs.us-west-2.amazonaws.com:/ /mnt/efs nfs4 rw,vers=4.1 0 0
bucket /mnt/gcs fuse.gcsfuse rw 0 0
/dev/sdb1 /mnt/my\\040disk xfs rw 0 0
"""


@pytest.mark.parametrize("path, kind", [
    ("/home/me/runs", "ext4"), ("/mnt/efs/runs", "nfs4"), ("/mnt/efs", "nfs4"),
    ("/mnt/efsx/runs", "overlay"),  # a longer name is not inside /mnt/efs
    ("/mnt/gcs/runs", "fuse.gcsfuse"), ("/mnt/my disk/runs", "xfs"), ("/tmp/runs", "overlay"),
])
def test_the_longest_mount_point_holding_a_path_gives_its_filesystem(path, kind):
    assert mount_type(path, MOUNTS) == kind


@pytest.mark.parametrize("path, expected", [
    ("s3://bucket/runs", True), ("gs://bucket/runs", True), ("file:///home/me/runs", True),
    ("/mnt/efs/runs", True), ("/mnt/gcs/runs", True),
    ("/home/me/runs", False), ("/tmp/runs", False),
])
def test_uris_and_network_filesystems_are_shared(path, expected):
    assert shared(path, MOUNTS) is expected


def test_a_single_node_may_use_its_own_disk():
    check("/home/me/runs", "sqlite:////home/me/mlflow.db", multi_node=False, mounts=MOUNTS)


def test_a_multi_node_run_refuses_node_local_storage_naming_the_key():
    with pytest.raises(ConfigError) as error:
        check("/home/me/runs", "http://mlflow:5000", multi_node=True, mounts=MOUNTS)
    message = str(error.value)
    assert "run.storage_path /home/me/runs" in message and "ext4" in message
    assert "s3://" in message and "file:///" in message and "\n" not in message


def test_a_multi_node_run_refuses_a_node_local_sqlite_store():
    with pytest.raises(ConfigError, match="tracking.uri sqlite:////home/me/mlflow.db"):
        check("s3://bucket/runs", "sqlite:////home/me/mlflow.db", multi_node=True,
              mounts=MOUNTS)


def test_a_multi_node_run_accepts_shared_storage_and_a_server():
    for storage in ("s3://bucket/runs", "/mnt/efs/runs", "file:///home/me/runs"):
        check(storage, "http://mlflow:5000", multi_node=True, mounts=MOUNTS)
    check("/mnt/efs/runs", "sqlite:////mnt/efs/mlflow.db", multi_node=True, mounts=MOUNTS)
