"""kvtc as a vLLM KV connector: prefix blocks compressed into a kvtc store and restored layer by layer.

    from vllm import LLM
    from vllm.config import KVTransferConfig
    llm = LLM(model=..., enable_prefix_caching=True, kv_transfer_config=KVTransferConfig(
        kv_connector="KVTCConnector", kv_connector_module_path="kvtc.vllm", kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"calibration": "model.kvtcal", "ratio": 16,
                                   "store": {"host_capacity_bytes": 4 << 30, "disk_dir": "/var/cache/kvtc"}}))

What it does (docs/SERVING.md has the whole story and the command lines):

- **Save.** When a block of ``block_size`` tokens of a request is full and its KV is in vLLM's paged
  cache, the connector compresses the block, all layers together (kvtc's PCA spans every layer and KV
  head), in block mode (``kvtc.compress_block``: the tokens at their true positions, the sinks exact
  only in the block that holds position 0, no exact window), and puts it into the store under the
  block's chained prefix hash (vLLM's ``request.block_hashes``), prefixed by a namespace of the
  calibration, ratio and block size. Blocks already in the store are not compressed again.
- **Load.** For a new request, the scheduler side counts the leading blocks of its prompt, beyond
  vLLM's own prefix cache, that the store holds, and reports them as external tokens (never the whole
  prompt: the last token is always computed, so the model yields logits). Before the forward pass the
  worker side fetches those blocks and entropy-decodes them (``start_load_kv``); a connector thread
  then reconstructs them into the request's paged blocks, layer 0 first, while the forward pass runs,
  and each attention layer waits for its own layer only (``wait_for_layer_load``). A block that has
  vanished or fails to decode is reported to vLLM (``get_block_ids_with_load_errors``), which
  recomputes it when run with ``kv_load_failure_policy="recompute"``.

Configuration (``kv_connector_extra_config``):

- ``calibration`` (required): a ``.kvtcal`` file for the served model (``kvtc calibrate`` or
  ``kvtc.hf.calibrate``). Its layers, KV heads and head size must match the model's.
- ``ratio``: the compression target (default 16).
- ``codec``: 2 (default: fixed-width groups + DEFLATE) or 3 (ECSQ + rANS: smaller blocks at the same
  error, block mode costs less, and the target bounds the stored bytes; needs a calibration with ECSQ
  models, which ``kvtc calibrate`` and ``kvtc.hf.calibrate`` learn by default).
- ``store``: keyword arguments of :class:`kvtc.store.Store` (default: 1 GiB of host memory).
  Stores are shared by every connector of one process with the same ``store`` settings, so the
  scheduler and worker sides of one engine see the same host tier.
- ``namespace``: a string that starts every key (default: from the calibration's fingerprint, the
  ratio, the block size and a codec other than 2, so engines with different models or settings never
  share blocks).
- ``n_threads``: threads for compression and restore (default 0: the library's choice).

Limits of this version: vLLM's CPU attention backend (paged caches ``[blocks, kv_heads, block_size,
2 * head_dim]``; the layout inside a block is probed from vLLM's own cache-write kernel), one KV cache
group of full attention (no sliding-window or hybrid models), tensor parallelism 1, no fp8 KV cache;
saves run after the forward pass that fills a block, loads within the forward pass that needs them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

import kvtc
from kvtc.store import Store

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = ["KVTCConnector", "KVTCConnectorMetadata", "shared_store", "shared_calibration"]

log = logging.getLogger("kvtc.vllm")

# --- process-wide objects shared by the scheduler and worker sides --------------------------------------

_lock = threading.Lock()
_stores: dict[str, Store] = {}
_calibrations: dict[str, kvtc.Calibration] = {}
DEFAULT_STORE = {"host_capacity_bytes": 1 << 30}


def shared_store(settings: dict | None) -> Store:
    """The process's Store for these settings (created on first use): one host tier per engine."""
    key = _store_key(settings)
    with _lock:
        if key not in _stores:
            _stores[key] = Store(**dict(DEFAULT_STORE if settings is None else settings))
        return _stores[key]


def _store_key(settings: dict | None) -> str:
    return json.dumps(dict(DEFAULT_STORE if settings is None else settings), sort_keys=True, default=str)


def existing_store(settings: dict | None) -> Store | None:
    """The process's Store for these settings if a worker-side connector has made it, else None."""
    with _lock:
        return _stores.get(_store_key(settings))


def scheduler_view(settings: dict | None) -> Store | None:
    """What a scheduler in a process of its own can look blocks up in: the shared Redis tier, if the
    settings name one (the host tier lives in the worker's process, and a disk directory admits one
    process). None without Redis."""
    settings = dict(DEFAULT_STORE if settings is None else settings)
    redis = {k: v for k, v in settings.items() if k.startswith("redis_")}
    if not redis.get("redis_socket") and not redis.get("redis_host"):
        return None
    return Store(1 << 20, **redis)


def shared_calibration(path: str) -> kvtc.Calibration:
    """The calibration at ``path``, loaded once per process."""
    with _lock:
        if path not in _calibrations:
            _calibrations[path] = kvtc.Calibration.load(path)
        return _calibrations[path]


# --- metadata: scheduler -> worker ------------------------------------------------------------------------

@dataclass
class BlockTransfer:
    """One block: where it lives in vLLM's paged cache, its store key and its first token's position."""

    block_id: int
    key: bytes
    start: int


@dataclass
class KVTCConnectorMetadata(KVConnectorMetadata):
    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)


@dataclass
class KVTCWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker -> scheduler: the keys of the blocks stored in this step, and of the blocks whose load failed
    (gone from the store, e.g. evicted, or undecodable), for a scheduler that runs in a process of its own
    and cannot see the worker's host tier."""

    stored: list[bytes] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        if isinstance(other, KVTCWorkerMetadata):
            return KVTCWorkerMetadata(self.stored + other.stored, self.missing + other.missing)
        return self


@dataclass
class _RequestState:
    """Scheduler-side bookkeeping of one running request."""

    request: "Request"
    block_ids: list[int]
    next_block: int = 0  # blocks before this one are in the store or queued for saving


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class KVTCConnector(KVConnectorBase_V1):
    """vLLM KV connector (v1 API) that keeps prefix blocks kvtc-compressed in a :class:`kvtc.store.Store`."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        if "calibration" not in extra:
            raise ValueError("KVTCConnector needs kv_connector_extra_config['calibration']: a .kvtcal file "
                             "for the served model (kvtc calibrate, or kvtc.hf.calibrate)")
        self._block_size = int(vllm_config.cache_config.block_size)
        self._ratio = float(extra.get("ratio", 16.0))
        self._n_threads = int(extra.get("n_threads", 0))
        self.codec = int(extra.get("codec", 2))
        if self.codec not in (2, 3):
            raise ValueError(f"KVTCConnector: codec {self.codec}: 2 (groups + DEFLATE) or 3 (ECSQ + rANS)")
        self._cal = shared_calibration(str(extra["calibration"]))
        settings = extra.get("store")
        if role == KVConnectorRole.WORKER:
            self._store: Store | None = shared_store(settings)
            self._lookup = self._store
        else:
            # One process for both sides (vLLM's in-process engine): the scheduler looks blocks up in the
            # worker's store. A scheduler process of its own (vLLM's server on the CPU runs the worker in a
            # child process) sees the keys the worker reports, and Redis if configured.
            self._store = existing_store(settings)
            self._lookup = self._store if self._store is not None else scheduler_view(settings)
        self._reported: OrderedDict[bytes, None] = OrderedDict()  # keys the worker stored (scheduler side)
        self._max_reported = int(extra.get("max_reported_keys", 1 << 20))
        self._stored_this_step: list[bytes] = []  # worker side, for build_connector_worker_meta
        self._missing_this_step: list[bytes] = []  # worker side: keys whose load failed in this step
        ns = extra.get("namespace") or (f"kvtc:{self._cal.fingerprint:016x}:{self._ratio:g}:{self._block_size}:" +
                                        (f"c{self.codec}:" if self.codec != 2 else ""))
        self._namespace = ns.encode() if isinstance(ns, str) else bytes(ns)
        # Scheduler side.
        self._seen: dict[str, "Request"] = {}  # requests the scheduler has shown us, by id
        self._requests: dict[str, _RequestState] = {}
        self._planned_loads: dict[str, tuple[int, list[bytes]]] = {}  # req id -> (first block, keys)
        self._load_now: dict[str, tuple[int, list[bytes]]] = {}
        # Worker side.
        self._layers: list[torch.Tensor] = []          # paged KV of each layer, in model order
        self._perm: _Permutation | None = None          # vLLM's in-block layout (None: plain)
        self._layer_of: dict[str, int] = {}            # vLLM layer name -> kvtc layer index
        self._pending: list[tuple[int, kvtc.Decoder]] = []  # (block id, opened container) to restore
        self._layer_ready: list[threading.Event] = []       # set when a layer of the pending blocks is in
        self._restorer: ThreadPoolExecutor | None = None     # the thread that restores, made on first use
        self._restore_job: Future | None = None
        self._load_errors: set[int] = set()
        # Worker-side running totals: blocks, bytes (raw = K and V at 16 bits), seconds per stage.
        self.stats = {"blocks_saved": 0, "blocks_loaded": 0, "blocks_failed": 0, "bytes_saved": 0,
                      "raw_bytes_saved": 0, "save_s": 0.0, "fetch_decode_s": 0.0, "restore_s": 0.0,
                      "restore_wait_s": 0.0}

    # ---------------------------------------------------------------------------------------------------
    # Scheduler side

    def _key(self, block_hash: Any) -> bytes:
        return self._namespace + bytes(block_hash)

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        self._seen[request.request_id] = request
        bs = self._block_size
        # The last prompt token is always computed, so that the forward pass yields its logits.
        n_max = min((request.num_prompt_tokens - 1) // bs, len(request.block_hashes))
        first = num_computed_tokens // bs
        if n_max <= first:
            return 0, False
        keys = [self._key(h) for h in request.block_hashes[first:n_max]]
        hits = 0
        for present in self._present(keys):
            if not present:
                break
            hits += 1
        if hits == 0:
            self._planned_loads.pop(request.request_id, None)
            return 0, False
        self._planned_loads[request.request_id] = (first, keys[:hits])
        return hits * bs - (num_computed_tokens - first * bs), False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        plan = self._planned_loads.pop(request.request_id, None)
        if num_external_tokens > 0 and plan is not None:
            first, keys = plan
            self._load_now[request.request_id] = (first, keys[: -(-num_external_tokens // self._block_size)])

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = KVTCConnectorMetadata()
        bs = self._block_size
        progress: list[tuple[_RequestState, int]] = []  # (request, full blocks after this step)
        for new in scheduler_output.scheduled_new_reqs:
            state = self._requests.get(new.req_id)
            if state is None:
                request = self._seen.get(new.req_id)
                if request is None:
                    continue
                state = self._requests[new.req_id] = _RequestState(request, list(new.block_ids[0]))
            else:
                state.block_ids = list(new.block_ids[0])
            self._plan_loads(meta, state, new.req_id)
            done = new.num_computed_tokens + scheduler_output.num_scheduled_tokens.get(new.req_id, 0)
            progress.append((state, done // bs))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._requests.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if new_ids is not None:
                if req_id in cached.resumed_req_ids:
                    state.block_ids = list(new_ids[0])
                else:
                    state.block_ids.extend(new_ids[0])
            self._plan_loads(meta, state, req_id)  # a preempted request, resumed with a prefix hit
            done = cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens.get(req_id, 0)
            progress.append((state, done // bs))
        # Saves: full blocks with a hash, not yet in the store, each key once per step (requests that
        # share a prefix and fill the same block in one step would otherwise compress it once each).
        planned: set[bytes] = set()
        for state, full in progress:
            full = min(full, len(state.request.block_hashes), len(state.block_ids))
            if full <= state.next_block:
                continue
            idx = list(range(state.next_block, full))
            keys = [self._key(state.request.block_hashes[b]) for b in idx]
            for b, key, present in zip(idx, keys, self._present(keys)):
                if not present and key not in planned:
                    planned.add(key)
                    meta.saves.append(BlockTransfer(state.block_ids[b], key, b * bs))
            state.next_block = full
        return meta

    def _plan_loads(self, meta: KVTCConnectorMetadata, state: _RequestState, req_id: str) -> None:
        """Adds the loads planned for this request, if any, to this step's metadata."""
        load = self._load_now.pop(req_id, None)
        if load is None:
            return
        first, keys = load
        for i, key in enumerate(keys):
            meta.loads.append(BlockTransfer(state.block_ids[first + i], key, (first + i) * self._block_size))
        state.next_block = max(state.next_block, first + len(keys))

    def _present(self, keys: list[bytes]) -> list[bool]:
        """Whether each key is known to be stored: reported by the worker, or found by a lookup."""
        if self._store is not None:  # the worker's own store, in this process
            return self._store.contains_many(keys)
        found = [k in self._reported for k in keys]
        if self._lookup is not None and not all(found):
            try:
                found = [a or b for a, b in zip(found, self._lookup.contains_many(keys))]
            except kvtc.KvtcError as e:  # a Redis server away: what the worker reported still counts
                log.debug("kvtc: scheduler lookup failed: %s", e)
        return found

    def update_connector_output(self, connector_output) -> None:
        meta = getattr(connector_output, "kv_connector_worker_meta", None)
        if isinstance(meta, KVTCWorkerMetadata):
            # A block reported once but gone since (evicted from the worker's host tier, say) would otherwise
            # be counted as present forever: every request sharing it would fail to load it, and it would
            # never be saved again. Its failed load is reported; it is a miss from now on.
            for key in meta.missing:
                self._reported.pop(key, None)
            for key in meta.stored:
                self._reported[key] = None
                self._reported.move_to_end(key)
            while len(self._reported) > self._max_reported:
                self._reported.popitem(last=False)

    def on_new_request(self, request: "Request") -> None:
        self._seen[request.request_id] = request

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._requests.pop(request.request_id, None)
        self._planned_loads.pop(request.request_id, None)
        self._load_now.pop(request.request_id, None)
        self._seen.pop(request.request_id, None)
        return False, None  # saves are synchronous: vLLM may free the blocks now

    # ---------------------------------------------------------------------------------------------------
    # Worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        named = []
        for name, tensor in kv_caches.items():
            m = _LAYER_INDEX.search(name)
            if m is None:
                raise ValueError(f"KVTCConnector: cannot tell the layer index of {name!r}")
            named.append((int(m.group(1)), name, tensor))
        named.sort(key=lambda x: x[0])
        cal = self._cal
        if [i for i, _, _ in named] != list(range(cal.n_layers)):
            raise ValueError(f"KVTCConnector: the model has attention layers {[i for i, _, _ in named]}, the "
                             f"calibration {cal.n_layers} layers")
        for i, name, t in named:
            if t.dim() != 4 or t.shape[1] != cal.n_kv_heads or t.shape[2] != self._block_size or \
                    t.shape[3] != 2 * cal.head_dim or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"KVTCConnector: layer {name} has a paged KV cache of shape {tuple(t.shape)} "
                                 f"on {t.device}; expected contiguous [blocks, {cal.n_kv_heads}, "
                                 f"{self._block_size}, {2 * cal.head_dim}] in host memory (vLLM's CPU "
                                 "attention backend) for this calibration")
            self._layer_of[name] = i
        self._layers = [t for _, _, t in named]
        self._perm = _cpu_block_layout(self._vllm_config, self._layers[0], self._block_size, cal.head_dim)

    def _blocks_standard(self, layer: int, block_ids: torch.Tensor) -> torch.Tensor:
        """Blocks of one layer as ``[n, kv_heads, 2, block_size, head_dim]`` (keys, then values): a copy."""
        t = self._layers[layer]
        flat = t.view(t.shape[0], t.shape[1], -1)[block_ids]  # [n, heads, 2 * bs * hd] in vLLM's layout
        if self._perm is not None:
            flat = flat[:, :, self._perm.inverse]
        return flat.view(len(block_ids), t.shape[1], 2, self._block_size, -1)

    def _write_standard(self, layer: int, block_id: int, std: torch.Tensor) -> None:
        """Writes ``[kv_heads, 2, block_size, head_dim]`` into one block of one layer, in vLLM's layout."""
        t = self._layers[layer]
        flat = std.reshape(t.shape[1], -1)
        if self._perm is not None:
            flat = flat[:, self._perm.forward]
        t.view(t.shape[0], t.shape[1], -1)[block_id] = flat

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        self._finish_restore()
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVTCConnectorMetadata)
        if not meta.loads:
            return
        t0 = time.perf_counter()
        values = self._store.get_many([t.key for t in meta.loads])
        pending = []
        for t, data in zip(meta.loads, values):
            try:
                if data is None:
                    raise kvtc.KvtcError("block left the store")
                dec = kvtc.Decoder(self._cal, data, self._n_threads)
                if dec.n_tokens != self._block_size or dec.position_offset != t.start:
                    raise kvtc.MismatchError(f"container holds tokens [{dec.position_offset}, "
                                             f"{dec.position_offset + dec.n_tokens}), block wants "
                                             f"[{t.start}, {t.start + self._block_size})")
            except kvtc.KvtcError as e:
                log.warning("kvtc: block %d (tokens from %d) not restored, vLLM recomputes it: %s",
                            t.block_id, t.start, e)
                self._load_errors.add(t.block_id)
                self._missing_this_step.append(t.key)
                self.stats["blocks_failed"] += 1
                continue
            pending.append((t.block_id, dec))
        self.stats["blocks_loaded"] += len(pending)
        self.stats["fetch_decode_s"] += time.perf_counter() - t0
        if not pending:
            return
        # Layers are reconstructed in order on the connector's thread while the forward pass runs:
        # layer l's attention waits (wait_for_layer_load) only for layer l, not for the layers after it.
        self._pending = pending
        self._layer_ready = [threading.Event() for _ in self._layers]
        if self._restorer is None:
            self._restorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvtc-restore")
        self._restore_job = self._restorer.submit(self._restore_all)

    def _restore_all(self) -> None:
        t0 = time.perf_counter()
        t = self._layers[0]
        std = torch.empty((t.shape[1], 2, self._block_size, t.shape[3] // 2), dtype=t.dtype)
        try:
            for layer in range(len(self._layers)):
                for block_id, dec in self._pending:
                    dec.restore_layer_into(layer, std[:, 0], std[:, 1])
                    self._write_standard(layer, block_id, std)
                self._layer_ready[layer].set()
        except Exception as e:  # the blocks hold garbage now: vLLM recomputes them
            log.warning("kvtc: restoring %d blocks failed, vLLM recomputes them: %s", len(self._pending), e)
            self._load_errors.update(block_id for block_id, _ in self._pending)
            self.stats["blocks_failed"] += len(self._pending)
            for event in self._layer_ready:
                event.set()
        finally:
            self.stats["restore_s"] += time.perf_counter() - t0

    def _finish_restore(self) -> None:
        """Waits for the restore of this step, if any, and forgets it."""
        if self._restore_job is not None:
            self._restore_job.result()
            self._restore_job = None
        self._pending = []
        self._layer_ready = []

    def wait_for_layer_load(self, layer_name: str) -> None:
        if not self._layer_ready:
            return
        layer = self._layer_of.get(layer_name)
        if layer is not None and not self._layer_ready[layer].is_set():
            t0 = time.perf_counter()
            self._layer_ready[layer].wait()
            self.stats["restore_wait_s"] += time.perf_counter() - t0

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: "AttentionMetadata",
                      **kwargs: Any) -> None:
        # Nothing per layer: a kvtc block spans every layer, so blocks are compressed in wait_for_save,
        # once the forward pass has written all of them.
        return

    def wait_for_save(self):
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVTCConnectorMetadata)
        # Every layer is restored by now (each attention layer waited for its own); the blocks of layers
        # that never asked are complete too.
        self._finish_restore()
        if not meta.saves:
            return
        t0 = time.perf_counter()
        ids = torch.tensor([t.block_id for t in meta.saves], dtype=torch.long)
        blocks = [self._blocks_standard(layer, ids) for layer in range(len(self._layers))]
        entries = []
        raw_bytes = 2 * 2 * sum(b[0, :, 0].numel() for b in blocks)  # one block's K and V at 16 bits
        for j, t in enumerate(meta.saves):
            keys = [b[j, :, 0] for b in blocks]
            values = [b[j, :, 1] for b in blocks]
            data = kvtc.compress(self._cal, keys, values, self._ratio, positions=t.start,
                                 exact_sinks=None if t.start == 0 else 0, exact_window=0,
                                 n_threads=self._n_threads, codec=self.codec)
            entries.append((t.key, data))
        try:
            self._store.put_many(entries, raw_bytes=[raw_bytes] * len(entries))
        except kvtc.KvtcError as e:  # a lost save is only a future miss; the request goes on
            log.warning("kvtc: %d blocks not stored: %s", len(entries), e)
        else:
            self._stored_this_step.extend(key for key, _ in entries)
            self.stats["blocks_saved"] += len(entries)
            self.stats["bytes_saved"] += sum(len(d) for _, d in entries)
            self.stats["raw_bytes_saved"] += raw_bytes * len(entries)
        self.stats["save_s"] += time.perf_counter() - t0

    def shutdown(self):
        self._finish_restore()
        if self._restorer is not None:
            self._restorer.shutdown()
            self._restorer = None

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        if not self._stored_this_step and not self._missing_this_step:
            return None
        meta = KVTCWorkerMetadata(self._stored_this_step, self._missing_this_step)
        self._stored_this_step, self._missing_this_step = [], []
        return meta

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    @property
    def store(self) -> Store | None:
        """The store (worker side; the scheduler side has it only when both share a process)."""
        return self._store


# --- vLLM's paged layout ------------------------------------------------------------------------------------

@dataclass
class _Permutation:
    """Where each element of a standard head block (keys ``[bs, hd]`` then values ``[bs, hd]``) lies in
    vLLM's block: ``vllm_flat = standard_flat[forward]`` and ``standard_flat = vllm_flat[inverse]``."""

    forward: torch.Tensor
    inverse: torch.Tensor


def _cpu_block_layout(vllm_config: "VllmConfig", sample: torch.Tensor, block_size: int,
                      head_dim: int) -> _Permutation | None:
    """How vLLM's CPU attention backend lays one head's tokens out inside a block, found by asking its
    own cache-write kernel to store known values; None when the layout is the plain one.

    The layout depends on the kernel variant (vLLM's "ISA": vec, vec16, amx, neon, ...); with "vec" on
    x86, keys are stored transposed, ``[head_dim, block_size]``. Probing the kernel instead of copying
    its rules keeps the connector right on every variant. The probe's values are distinct bit
    patterns, so it is exact in every dtype; a result that is not a permutation is refused.
    """
    try:
        from vllm import _custom_ops as ops
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
    except ImportError as e:  # not the CPU build of vLLM
        raise ValueError(f"KVTCConnector supports vLLM's CPU attention backend only ({e})") from e
    dtype = sample.dtype
    cache_dtype = vllm_config.cache_config.cache_dtype
    if cache_dtype and "fp8" in str(cache_dtype):
        raise ValueError("KVTCConnector: an fp8 KV cache is not supported (kvtc restores 16- or 32-bit values)")
    isa = _get_attn_isa(dtype, block_size, head_dim, cache_dtype)
    n = 2 * block_size * head_dim  # one head of one block: keys, then values
    if n > 1 << 16 and dtype != torch.float32:
        raise ValueError(f"KVTCConnector: blocks of {block_size} tokens x {head_dim} dims are too large to probe")
    ids = torch.arange(n, dtype=torch.int64)
    src = ids.to(torch.float32) if dtype == torch.float32 else ids.to(torch.int16).view(dtype)
    key = src[: n // 2].reshape(block_size, 1, head_dim).clone()
    value = src[n // 2:].reshape(block_size, 1, head_dim).clone()
    block = torch.zeros((1, 1, 2 * block_size, head_dim), dtype=dtype)
    key_cache, value_cache = block.chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, torch.arange(block_size, dtype=torch.int64),
                                   isa)
    flat = block.view(-1)
    got = flat.to(torch.int64) if dtype == torch.float32 else flat.view(torch.int16).to(torch.int64) & 0xFFFF
    if not torch.equal(torch.sort(got).values, ids):
        raise ValueError(f"KVTCConnector: vLLM's CPU cache layout (isa {isa}) is not a permutation of the block")
    if torch.equal(got, ids):
        return None
    inverse = torch.empty_like(got)
    inverse[got] = torch.arange(n, dtype=torch.int64)
    log.info("kvtc: vLLM's CPU attention (isa %s) stores blocks in a permuted layout; the connector maps it", isa)
    return _Permutation(forward=got, inverse=inverse)
