"""One vLLM engine on the CPU, with or without kvtc's connector, through a shared-prefix scenario.

Run as a script (vLLM wants its own process: it binds threads and sets torch's thread count):

    python vllm_scenario.py --model DIR --out result.json [--calibration CAL --ratio 16 --store-dir DIR]
        [--prefix-tokens 2048] [--continuation-tokens 32]

Without --calibration the engine runs plain (the uncompressed reference). With it, KVTCConnector is
loaded through kv_connector_module_path="kvtc.vllm" and the scenario is:
  1. a "writer" request: prefix + question A, one token out; its full blocks go into the store (with
     --writers 2, a second request with the same prefix in the same batch);
  2. vLLM's own prefix cache is dropped (LLM.reset_prefix_cache), so only the store holds the prefix;
  3. "reader" requests: prefix + question B + the first j tokens of a continuation, one token out each
     (teacher forcing, as the eval harness measures agreement), their prefix restored from the store.
Both modes run step 3 the same way, so the argmax tokens of the two runs can be compared position by
position. Writes JSON: the argmax tokens, vLLM's prompt-token counters by source (local_compute,
local_cache_hit, external_kv_transfer), the external prefix-cache counters, the connector's own
counters and the store's metrics, and wall times.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # scheduler, worker, connector: this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of paged KV cache


def corpus_docs(shared_dir: str, name: str) -> list[str]:
    with lzma.open(os.path.join(shared_dir, "corpus", f"{name}.txt.xz"), "rt", encoding="utf-8") as f:
        return f.read()[:-1].split("\n\x1e\n")


def build_prompts(tokenizer, shared_dir: str, prefix_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """Token ids of a long shared prefix (held-out prose) and two different questions."""
    text = ""
    for doc in corpus_docs(shared_dir, "prose.test"):
        text += doc + "\n\n"
        if len(tokenizer.encode(text)) > prefix_tokens + 64:
            break
    ids = tokenizer.encode(text)
    prefix = ids[:prefix_tokens]
    q_a = tokenizer.encode("\n\nQuestion: what is the first paragraph about? Answer:")
    q_b = tokenizer.encode("\n\nSummary of the text above, in one paragraph:")
    return prefix, q_a, q_b


def prompt_counters(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        name = getattr(m, "name", "")
        labels = getattr(m, "labels", {}) or {}
        value = getattr(m, "value", None)
        if name == "vllm:prompt_tokens_by_source":
            out[labels.get("source", "?")] = value
        elif name in ("vllm:external_prefix_cache_hits", "vllm:external_prefix_cache_queries",
                      "vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:prompt_tokens"):
            out[name.split(":", 1)[1]] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
    ap.add_argument("--calibration")
    ap.add_argument("--ratio", type=float, default=16.0)
    ap.add_argument("--codec", type=int, default=2)
    ap.add_argument("--n-threads", type=int, default=0, help="the connector's threads (0: the library's choice)")
    ap.add_argument("--store-dir", help="disk tier directory (default: host memory only)")
    ap.add_argument("--host-capacity-bytes", type=int, default=1 << 30)
    ap.add_argument("--redis-socket", help="a Redis server's unix socket: the store's shared tier")
    ap.add_argument("--redis-prefix", default="kvtc:")
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--continuation-tokens", type=int, default=32)
    ap.add_argument("--continuation", help="JSON file with the reference run's continuation tokens")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no-writer", action="store_true",
                    help="skip step 1: the store was filled by another process (a second server)")
    ap.add_argument("--writers", type=int, default=1, choices=(1, 2),
                    help="2: a second writer with the same prefix (and the start of question B) in the same batch: "
                         "both fill the same blocks in the same steps, which must be stored once")
    ap.add_argument("--repeats", type=int, default=0,
                    help="time the first reader again this many times, each after dropping vLLM's prefix cache")
    ap.add_argument("--lose-block", type=int, default=-1,
                    help="the first reader's load finds block N of its prefix gone (as if evicted after the "
                         "scheduler counted it): vLLM must recompute it")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    kw = dict(model=args.model, dtype=args.dtype, max_model_len=min(args.prefix_tokens + 512, 8192), enforce_eager=True,
              enable_prefix_caching=True, disable_log_stats=False, seed=0)
    if args.calibration:
        store = {"host_capacity_bytes": args.host_capacity_bytes}
        if args.store_dir:
            store.update(disk_dir=args.store_dir, write_through=True)
        if args.redis_socket:
            store.update(redis_socket=args.redis_socket, redis_prefix=args.redis_prefix)
        kw["kv_transfer_config"] = KVTransferConfig(
            kv_connector="KVTCConnector", kv_connector_module_path="kvtc.vllm", kv_role="kv_both",
            kv_connector_extra_config={"calibration": args.calibration, "ratio": args.ratio, "store": store,
                                       "n_threads": args.n_threads, "codec": args.codec},
            kv_load_failure_policy="recompute")
    t0 = time.perf_counter()
    llm = LLM(**kw)
    result: dict = {"mode": "kvtc" if args.calibration else "plain", "load_s": time.perf_counter() - t0,
                    "block_size": llm.llm_engine.vllm_config.cache_config.block_size}
    tok = llm.get_tokenizer()
    prefix, q_a, q_b = build_prompts(tok, args.shared, args.prefix_tokens)
    greedy1 = SamplingParams(temperature=0, max_tokens=1)

    # 1. The writer.
    if not args.no_writer:
        t = time.perf_counter()
        writers = [{"prompt_token_ids": prefix + q_a}]
        if args.writers == 2:
            writers.append({"prompt_token_ids": prefix + q_b[:4]})
        llm.generate(writers, greedy1, use_tqdm=False)
        result["writer_s"] = time.perf_counter() - t
        result["after_writer"] = prompt_counters(llm.get_metrics())
    # 2. Only the store keeps the prefix now.
    assert llm.reset_prefix_cache(), "vLLM refused to reset its prefix cache"

    # The continuation to force: the reference run's own greedy tokens (or, for the reference, generated
    # here from a cold cache).
    if args.continuation:
        with open(args.continuation) as f:
            cont = json.load(f)["continuation"]
    else:
        out = llm.generate([{"prompt_token_ids": prefix + q_b}],
                           SamplingParams(temperature=0, max_tokens=args.continuation_tokens), use_tqdm=False)
        cont = list(out[0].outputs[0].token_ids)
        assert llm.reset_prefix_cache()
    result["continuation"] = cont

    # 3. The first reader alone (its time to first token), then the teacher-forced readers in one batch.
    if args.lose_block >= 0:
        from kvtc.vllm import shared_store

        store_obj = shared_store(kw["kv_transfer_config"].kv_connector_extra_config["store"])
        real_get_many = store_obj.get_many

        def get_many_losing_one(keys):
            values = real_get_many(keys)
            if len(values) > args.lose_block:
                values[args.lose_block] = None
            store_obj.get_many = real_get_many  # only the first load loses a block
            return values

        store_obj.get_many = get_many_losing_one
    before = prompt_counters(llm.get_metrics())
    t = time.perf_counter()
    first = llm.generate([{"prompt_token_ids": prefix + q_b}], greedy1, use_tqdm=False)
    result["first_reader_s"] = time.perf_counter() - t
    after = prompt_counters(llm.get_metrics())
    result["first_reader"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    result["first_reader"]["num_cached_tokens"] = first[0].num_cached_tokens
    result["repeats_s"] = []
    for _ in range(args.repeats):
        assert llm.reset_prefix_cache()
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": prefix + q_b}], greedy1, use_tqdm=False)
        result["repeats_s"].append(time.perf_counter() - t)
    if args.repeats:
        assert llm.reset_prefix_cache()
    result["prompt_tokens"] = len(prefix) + len(q_b)
    result["prefix_tokens"] = len(prefix)
    prompts = [{"prompt_token_ids": prefix + q_b + cont[:j]} for j in range(1, len(cont))]
    t = time.perf_counter()
    outs = llm.generate(prompts, greedy1, use_tqdm=False)
    result["readers_s"] = time.perf_counter() - t
    result["argmax"] = [first[0].outputs[0].token_ids[0]] + [o.outputs[0].token_ids[0] for o in outs]

    if args.calibration:
        from vllm.distributed.kv_transfer.kv_transfer_state import get_kv_transfer_group

        from kvtc.vllm import shared_store

        result["connector"] = dict(get_kv_transfer_group().stats)
        result["connector_codec"] = get_kv_transfer_group().codec

        store_kw = kw["kv_transfer_config"].kv_connector_extra_config["store"]
        result["store_metrics"] = shared_store(store_kw).metrics()
        result["store_entries"] = shared_store(store_kw).entry_count
        result["store_bytes"] = shared_store(store_kw).bytes_used
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
