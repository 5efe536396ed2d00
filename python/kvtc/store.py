"""The block store: compressed KV blocks in host memory over an optional disk directory.

    from kvtc.store import Store
    store = Store(host_capacity_bytes=8 << 30, disk_dir="/var/cache/kvtc", disk_capacity_bytes=200 << 30)
    store.put(block_hash, kvtc.compress_block(cal, keys, values, a, b, 16))
    data = store.get(block_hash)          # bytes, or None on a miss

Keys are bytes (a serving engine's block hash, e.g. vLLM's chained prefix hash); values are bytes
(containers, which the store does not parse). The host tier evicts by S3-FIFO (or LRU) and demotes what
it evicts to disk; disk hits are promoted back. Disk entries are checksummed files written atomically;
a corrupt one is a miss, removed and counted. Every call releases the GIL and may run from any thread.
The design and file format: docs/STORE.md. Not here yet: the Redis tier and the vLLM connector.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from . import _kvtc

__all__ = ["Store"]


def _key(k: bytes | str) -> bytes:
    return k.encode() if isinstance(k, str) else bytes(k)


class Store:
    """A TieredStore: a host tier of ``host_capacity_bytes`` over an optional disk tier in ``disk_dir``.

    ``policy``: "s3fifo" (default) or "lru" for the host tier. ``write_through``: put writes to disk
    as well (otherwise disk receives host's evictions). Capacities count key + value bytes in memory
    and whole files on disk.
    """

    def __init__(self, host_capacity_bytes: int, *, policy: str = "s3fifo", disk_dir: str | os.PathLike | None = None,
                 disk_capacity_bytes: int = 16 << 30, write_through: bool = False, n_threads: int = 2):
        self._core = _kvtc.Store.open(int(host_capacity_bytes), policy,
                                      None if disk_dir is None else os.fspath(disk_dir), int(disk_capacity_bytes),
                                      bool(write_through), int(n_threads))

    def put(self, key: bytes | str, value: bytes) -> None:
        """Stores key -> value (OutOfSpaceError if it can never fit, KvtcIOError if disk fails)."""
        self._core.put(_key(key), bytes(value))

    def get(self, key: bytes | str) -> bytes | None:
        """The value, or None on a miss."""
        return self._core.get(_key(key))

    def contains(self, key: bytes | str) -> bool:
        """Whether the key is held now (counts nothing, refreshes nothing)."""
        return self._core.contains(_key(key))

    def erase(self, key: bytes | str) -> bool:
        """Removes the key from every tier; True if it was there."""
        return self._core.erase(_key(key))

    def put_many(self, items: Iterable[tuple[bytes | str, bytes]]) -> None:
        self._core.put_many([(_key(k), bytes(v)) for k, v in items])

    def get_many(self, keys: Sequence[bytes | str]) -> list[bytes | None]:
        return self._core.get_many([_key(k) for k in keys])

    def contains_many(self, keys: Sequence[bytes | str]) -> list[bool]:
        return self._core.contains_many([_key(k) for k in keys])

    @property
    def bytes_used(self) -> int:
        return self._core.bytes_used

    @property
    def entry_count(self) -> int:
        return self._core.entry_count

    def metrics(self) -> dict:
        """Hits, misses, puts, evictions, corruptions, bytes and latency histograms per tier."""
        return json.loads(self._core.metrics_json())

    def metrics_prometheus(self) -> str:
        """The same in Prometheus' text exposition format (kvtc_store_hits_total{tier="host"} ...)."""
        return self._core.metrics_prometheus()
