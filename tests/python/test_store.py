"""kvtc.store from Python: compressed blocks through host memory and disk, as a serving engine uses it."""
from __future__ import annotations

import gc
import hashlib

import pytest
import torch
from safetensors.torch import load_file

import kvtc
from conftest import redis_server
from kvtc.store import Store

BLOCK = 64


@pytest.fixture(scope="module")
def blocks(repo_root):
    """Block hashes chained like vLLM's prefix hashes, and the block containers of the small test cache."""
    cal = kvtc.Calibration.fit([repo_root / "data" / "small-calib.safetensors"], ratios=[16])
    t = load_file(str(repo_root / "data" / "small-test.safetensors"))
    keys = [t[f"k.{l}"] for l in range(cal.n_layers)]
    values = [t[f"v.{l}"] for l in range(cal.n_layers)]
    out, parent = [], b""
    for a in range(0, keys[0].shape[1], BLOCK):
        h = hashlib.sha256(parent + str(a).encode()).digest()
        out.append((h, kvtc.compress_block(cal, keys, values, a, a + BLOCK, 16)))
        parent = h
    return cal, keys, values, out


def test_blocks_through_host_and_disk(blocks, tmp_path):
    cal, keys, values, items = blocks
    size = max(len(v) for _, v in items)
    # Room for two blocks in memory: the others are demoted to disk and promoted back when read.
    store = Store(2 * (size + 32), disk_dir=tmp_path / "disk", disk_capacity_bytes=100 * size)
    store.put_many(items)
    assert store.contains_many([k for k, _ in items]) == [True] * len(items)
    got = store.get_many([k for k, _ in items])
    assert got == [v for _, v in items]
    # Restored from the store, the blocks rebuild the sequence as the containers themselves do.
    k_out = torch.zeros((len(keys),) + tuple(keys[0].shape), dtype=torch.bfloat16)
    v_out = torch.zeros_like(k_out)
    for data in got:
        kvtc.decompress_into(cal, data, k_out, v_out)
    k_ref = torch.zeros_like(k_out)
    v_ref = torch.zeros_like(v_out)
    for _, data in items:
        kvtc.decompress_into(cal, data, k_ref, v_ref)
    assert torch.equal(k_out, k_ref) and torch.equal(v_out, v_ref)
    m = store.metrics()
    assert m["demotions"] >= len(items) - 2 and m["promotions"] >= 1
    assert m["tiers"]["all"]["hits"] == len(items)
    text = store.metrics_prometheus()
    assert f'kvtc_store_hits_total{{tier="all"}} {len(items)}' in text
    assert 'kvtc_store_get_latency_microseconds_bucket{tier="host",le="+Inf"}' in text


def test_disk_survives_reopen_and_catches_corruption(blocks, tmp_path):
    _, _, _, items = blocks
    d = tmp_path / "disk"
    store = Store(1 << 20, disk_dir=d, write_through=True)
    store.put_many(items)
    del store
    gc.collect()  # releases the directory's lock
    again = Store(1 << 20, disk_dir=d)
    assert again.get(items[3][0]) == items[3][1]
    # Flip one byte of another entry's file: a miss, counted, never wrong bytes.
    files = sorted(p for p in d.iterdir() if p.suffix == ".kvb")
    victim = [p for p in files if items[5][0] in p.read_bytes()][0]
    raw = bytearray(victim.read_bytes())
    raw[-7] ^= 0x10
    victim.write_bytes(bytes(raw))
    assert again.get(items[5][0]) is None
    assert again.metrics()["tiers"]["disk"]["corruptions"] == 1


def test_errors():
    with pytest.raises(kvtc.InvalidArgumentError):
        Store(1 << 20, policy="fifo")
    with pytest.raises(kvtc.InvalidArgumentError):
        Store(0)
    store = Store(100)
    with pytest.raises(kvtc.OutOfSpaceError):
        store.put(b"big", b"x" * 200)
    assert store.get("absent") is None and not store.erase(b"absent")


@pytest.fixture
def redis_socket(tmp_path):
    """A redis-server of this test's own on a unix socket."""
    with redis_server(tmp_path, timeout_s=5) as sock:
        yield sock


def test_two_stores_share_blocks_through_redis(blocks, redis_socket):
    _, _, _, items = blocks
    first = Store(1 << 20, redis_socket=redis_socket, redis_prefix="kvtc:test-model:")
    second = Store(1 << 20, redis_socket=redis_socket, redis_prefix="kvtc:test-model:")  # empty host tier
    other_model = Store(1 << 20, redis_socket=redis_socket, redis_prefix="kvtc:other-model:")
    assert first.redis_connected and second.redis_connected
    raw = 2 * 64 * 1024  # what each block would be uncompressed (declared, for the ratio)
    first.put(items[0][0], items[0][1], raw_bytes=raw)
    first.put_many(items[1:], raw_bytes=[raw] * (len(items) - 1))
    assert second.get_many([k for k, _ in items]) == [v for _, v in items]
    assert other_model.get(items[0][0]) is None
    m = second.metrics()
    assert m["tiers"]["redis"]["hits"] == len(items)
    assert m["promotions"] == len(items)
    assert second.get(items[2][0]) == items[2][1]  # from its host tier now
    assert second.metrics()["tiers"]["redis"]["hits"] == len(items)
    m = first.metrics()["tiers"]["all"]
    assert m["bytes_raw_put"] == raw * len(items)
    assert m["compression_ratio"] == pytest.approx(raw * len(items) / sum(len(v) for _, v in items), rel=0.01)
    with pytest.raises(kvtc.InvalidArgumentError):
        first.put_many(items, raw_bytes=[raw])  # one size per item, or none
    assert 'kvtc_store_reconnects_total{tier="redis"} 0' in first.metrics_prometheus()


def test_redis_down_serves_from_host(blocks, tmp_path):
    _, _, _, items = blocks
    store = Store(1 << 20, redis_socket=str(tmp_path / "nobody.sock"))
    assert not store.redis_connected
    with pytest.raises(kvtc.KvtcIOError, match="stored locally; not shared"):
        store.put(items[0][0], items[0][1])
    assert store.get(items[0][0]) == items[0][1]
    assert store.get(items[1][0]) is None


def test_cli_store_stats_reports_the_redis_server(blocks, redis_socket, kvtc_cli, tmp_path):
    import json
    import subprocess

    _, _, _, items = blocks
    store = Store(1 << 20, redis_socket=redis_socket)
    store.put_many(items)
    r = subprocess.run([str(kvtc_cli), "store", "stats", "--redis-socket", redis_socket, "--json"],
                       capture_output=True, text=True, check=True)
    redis = json.loads(r.stdout)["redis"]
    assert redis["connected"] and redis["keys"] == len(items) and redis["used_memory_bytes"] > 0
    assert redis["redis_version"].startswith("7.")
    # With a disk directory too, and a server that is not there: the disk part, and why Redis is not.
    (tmp_path / "disk").mkdir()
    r = subprocess.run([str(kvtc_cli), "store", "stats", str(tmp_path / "disk"), "--redis-socket",
                        str(tmp_path / "nobody.sock")], capture_output=True, text=True, check=True)
    assert "0 entries" in r.stdout and "unreachable" in r.stdout
    r = subprocess.run([str(kvtc_cli), "store", "stats", "--redis-socket", str(tmp_path / "nobody.sock")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unreachable" in r.stdout
