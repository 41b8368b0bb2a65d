"""Which malloc settings the training workers start with (orchestrator.allocator)."""

from __future__ import annotations

from orchestrator import allocator


def test_workers_get_glibc_tunables_that_keep_freed_memory(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    tunables = allocator.worker_runtime_env()["env_vars"]["GLIBC_TUNABLES"]
    assert dict(part.split("=") for part in tunables.split(":")) == {
        "glibc.malloc.arena_max": "1", "glibc.malloc.mmap_threshold": str(2**30),
        "glibc.malloc.trim_threshold": str(2**30)}


def test_tunables_the_user_set_even_empty_are_left_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    assert allocator.worker_runtime_env() == {}
