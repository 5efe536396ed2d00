"""The block store: compressed KV blocks in host memory over an optional disk directory and an optional
Redis server shared by many processes.

    from kvtc.store import Store
    store = Store(host_capacity_bytes=8 << 30, disk_dir="/var/cache/kvtc", disk_capacity_bytes=200 << 30,
                  redis_socket="/run/redis/redis.sock", redis_prefix="kvtc:" + model_id)
    store.put(block_hash, kvtc.compress_block(cal, keys, values, a, b, 16))
    data = store.get(block_hash)          # bytes, or None on a miss

Keys are bytes (a serving engine's block hash, e.g. vLLM's chained prefix hash); values are bytes
(containers, which the store does not parse). The host tier evicts by S3-FIFO (or LRU) and demotes what
it evicts to disk; disk hits are promoted back. Disk entries are checksummed files written atomically;
a corrupt one is a miss, removed and counted. With Redis (``redis_socket`` or ``redis_host``), puts are
written through to the server and gets that miss host and disk ask it, so a second process with its own
empty store finds the first one's blocks; while the server is away, the store serves from host and disk,
puts raise ``KvtcIOError`` ("stored locally; not shared") after storing locally, and the tier reconnects
by itself. Every call releases the GIL and may run from any thread. The design: docs/STORE.md.
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

    Redis (optional, below disk): ``redis_socket`` (a unix socket path) or ``redis_host`` and
    ``redis_port``; ``redis_prefix`` namespaces the keys (use one per model, e.g. "kvtc:" + model id);
    ``redis_write_through`` (default True) sends every put to the server; ``redis_pool_size``
    connections. The store is created even if the server is down (it connects when it appears).
    """

    def __init__(self, host_capacity_bytes: int, *, policy: str = "s3fifo", disk_dir: str | os.PathLike | None = None,
                 disk_capacity_bytes: int = 16 << 30, write_through: bool = False, n_threads: int = 2,
                 redis_socket: str | os.PathLike | None = None, redis_host: str | None = None,
                 redis_port: int = 6379, redis_prefix: str | bytes = "kvtc:", redis_write_through: bool = True,
                 redis_pool_size: int = 4):
        prefix = redis_prefix.decode() if isinstance(redis_prefix, bytes) else str(redis_prefix)
        self._core = _kvtc.Store.open(int(host_capacity_bytes), policy,
                                      None if disk_dir is None else os.fspath(disk_dir), int(disk_capacity_bytes),
                                      bool(write_through), int(n_threads),
                                      None if redis_socket is None else os.fspath(redis_socket), redis_host,
                                      int(redis_port), prefix, bool(redis_write_through), int(redis_pool_size))

    def put(self, key: bytes | str, value: bytes, raw_bytes: int = 0) -> None:
        """Stores key -> value (OutOfSpaceError if it can never fit, KvtcIOError if disk fails or, after
        storing locally, if Redis could not be written). ``raw_bytes``: the uncompressed size the value
        stands for, for the metrics' compression ratio."""
        self._core.put(_key(key), bytes(value), int(raw_bytes))

    def get(self, key: bytes | str) -> bytes | None:
        """The value, or None on a miss."""
        return self._core.get(_key(key))

    def contains(self, key: bytes | str) -> bool:
        """Whether the key is held now (counts nothing, refreshes nothing)."""
        return self._core.contains(_key(key))

    def erase(self, key: bytes | str) -> bool:
        """Removes the key from every tier; True if it was there."""
        return self._core.erase(_key(key))

    def put_many(self, items: Iterable[tuple[bytes | str, bytes]], raw_bytes: Sequence[int] | None = None) -> None:
        """Stores each key -> value (errors as for :meth:`put`). ``raw_bytes``: per item, the uncompressed
        size its value stands for (feeds the ``bytes_raw_put`` metric), or None."""
        self._core.put_many([(_key(k), bytes(v)) for k, v in items], [int(r) for r in (raw_bytes or ())])

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

    @property
    def redis_connected(self) -> bool:
        """Whether a Redis tier is configured and believes its server reachable."""
        return self._core.redis_connected

    def metrics(self) -> dict:
        """Hits, misses, puts, evictions, corruptions, bytes and latency histograms per tier."""
        return json.loads(self._core.metrics_json())

    def metrics_prometheus(self) -> str:
        """The same in Prometheus' text exposition format (kvtc_store_hits_total{tier="host"} ...)."""
        return self._core.metrics_prometheus()
