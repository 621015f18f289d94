"""Engine presets: named bundles of ``engine`` settings that follow a known system.

``engine.preset: sglang`` fills every engine field the scenario leaves unset with that
system's value; fields the scenario sets win, one by one. Each value carries the source
it comes from (docs, source code or paper); ``docs/presets.md`` tabulates them.

A preset holds only what the system documents or its code defaults to; anything else
keeps the engine's own default. Where a system derives a value from the GPU (vLLM's
budgets, SGLang's chunk size and running-request cap), the preset takes the value that
system picks on one 80 GB H100, the default deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, NamedTuple

VLLM_ARGS = "vllm/engine/arg_utils.py (EngineArgs.get_batch_defaults)"
VLLM_SCHED = "vllm/config/scheduler.py, vllm/v1/core/sched/scheduler.py"
SGLANG_ARGS = "python/sglang/srt/server_args.py (ServerArgs defaults)"
TRTLLM_DOCS = "nvidia.github.io/TensorRT-LLM"
LIGHTLLM_ARGS = "lightllm/server/api_cli.py, lightllm/server/api_start.py"


class Preset(NamedTuple):
    """One preset: what it stands for, and the engine fields it sets."""

    description: str
    engine: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "vllm": Preset(
        "vLLM v1 (`vllm serve` on an H100): token-budget scheduler with chunked prefill, "
        "paged KV, automatic prefix caching, recompute preemption.",
        {
            # V1 scheduler: decodes first, then running and new prefills in one token
            # budget (vllm/v1/core/sched/scheduler.py).
            "batching": "token_budget",
            "queue": "fcfs",  # SchedulerConfig.policy default 'fcfs' (VLLM_SCHED)
            # GPUs of >= 70 GiB other than A100, OPENAI_API_SERVER context: 1024 seqs and
            # 8192 batched tokens (VLLM_ARGS; 256 / 2048 on smaller GPUs).
            "max_num_seqs": 1024,
            "max_num_batched_tokens": 8192,
            "chunked_prefill": True,  # always on in V1 (docs.vllm.ai, "Chunked Prefill")
            # long_prefill_token_threshold defaults to 0 = no per-request cap while
            # max_num_partial_prefills is 1 (VLLM_SCHED).
            "long_prefill_token_threshold": None,
            "block_size_tokens": 16,  # CacheConfig.block_size default on CUDA
            "kv_watermark_frac": 0.0,  # V1's KVCacheManager has no watermark
            "kv_reservation": "paged",
            "prefix_cache": "hashed",  # enable_prefix_caching on by default in V1
            # V1 preempts by recompute only; the victim is the last of the running list
            # (FCFS policy) (vllm/v1/core/sched/scheduler.py).
            "preemption_mode": "recompute",
            "preemption_victim": "newest",
        },
    ),
    "sglang": Preset(
        "SGLang (one H100): chunked prefill without mixing prefill and decode, "
        "token-granular KV (page size 1), RadixAttention prefix cache, retraction.",
        {
            # Prefill batches run alone (enable_mixed_chunk off by default), with prompts
            # chunked at chunked_prefill_size (SGLANG_ARGS).
            "batching": {"kind": "prefill_first", "chunked": True},
            "queue": "fcfs",  # schedule_policy default 'fcfs' (SGLANG_ARGS)
            # chunked_prefill_size: 8192 on GPUs of 35-160 GB (H100, H200, A100-80G);
            # it caps a prefill batch's new tokens (PrefillAdder's rem_chunk_tokens) below
            # max_prefill_tokens=16384 (SGLANG_ARGS).
            "max_num_batched_tokens": 8192,
            "chunked_prefill": True,
            "long_prefill_token_threshold": None,
            # max_running_requests defaults to min(max_total_tokens // 2, the request
            # pool), the pool being 2048 for Llama-3.1-8B on an H100
            # (python/sglang/srt/model_executor/model_runner.py, _resolve_max_num_reqs).
            "max_num_seqs": 2048,
            "block_size_tokens": 1,  # page_size default 1 (SGLANG_ARGS)
            "kv_reservation": "paged",
            "prefix_cache": "radix",  # RadixAttention on unless --disable-radix-cache
            # Out of KV in decode, SGLang retracts requests: frees their KV (the radix
            # tree may keep the prefix) and re-queues them (scheduler retract_decode).
            "preemption_mode": "recompute",
            "preemption_victim": "newest",
        },
    ),
    "trtllm": Preset(
        "TensorRT-LLM (LLM API / trtllm-serve): in-flight batching of whole contexts, "
        "GUARANTEED_NO_EVICT capacity scheduler, KV block reuse.",
        {
            # In-flight batching mixes context and generation requests in one step
            # ("Tuning Max Batch Size and Max Num Tokens", TRTLLM_DOCS); context chunking
            # is off by default (TorchLlmArgs.enable_chunked_prefill=False).
            "batching": "orca",
            "chunked_prefill": False,
            "queue": "fcfs",  # SchedulerConfig.waiting_queue_policy default FCFS
            # max_num_tokens 8192 and max_batch_size 2048 (BuildConfig defaults, also
            # taken by trtllm-serve).
            "max_num_batched_tokens": 8192,
            "max_num_seqs": 2048,
            "long_prefill_token_threshold": None,
            # KvCacheConfig.tokens_per_block default 32 (LLM API reference, TRTLLM_DOCS;
            # trtllm-build's TensorRT engines default to 64).
            "block_size_tokens": 32,
            # CapacitySchedulerPolicy default GUARANTEED_NO_EVICT: a request starts only
            # if KV for its prompt + max new tokens is free, so it is never paused
            # ("Useful Runtime Options", TRTLLM_DOCS).
            "kv_reservation": "max",
            "prefix_cache": "hashed",  # KvCacheConfig.enable_block_reuse default True
            "preemption_mode": "recompute",  # unused: max reservation never preempts
        },
    ),
    "orca": Preset(
        "Orca (Yu et al., OSDI'22): iteration-level scheduling with whole prompts joining "
        "the running batch, max_tokens of KV reserved per request.",
        {
            # Iteration-level scheduling + selective batching (paper §3-4).
            "batching": "orca",
            "chunked_prefill": False,
            "queue": "fcfs",  # the scheduler picks requests in arrival order (§4.2)
            # Algorithm 1 reserves max_tokens KV slots per request at admission, so a
            # running request never runs out (§4.2); slots are contiguous, not paged.
            "kv_reservation": "max",
            "block_size_tokens": 1,
            "prefix_cache": "none",
            "preemption_mode": "recompute",  # unused: max reservation never preempts
        },
    ),
    "sarathi": Preset(
        "Sarathi-Serve (Agrawal et al., OSDI'24): stall-free batching, chunked prefills "
        "in a 512-token budget, vLLM's paged KV.",
        {
            # Token budget 512 is the paper's strict-SLO setting (2048 relaxed) (§5).
            "batching": {"kind": "sarathi", "token_budget": 512},
            "chunked_prefill": True,
            "queue": "fcfs",
            # Built on vLLM (v0) paged attention: blocks of 16, recompute preemption.
            "block_size_tokens": 16,
            "kv_reservation": "paged",
            "prefix_cache": "none",
            "preemption_mode": "recompute",
            "preemption_victim": "newest",
        },
    ),
    "fastertransformer": Preset(
        "FasterTransformer: request-level static batching, KV for the maximum sequence "
        "length allocated per request.",
        {
            # A batch runs to its last member's end; nobody joins (FT's GPT/Triton
            # backend without inflight batching; docs/gpt_guide.md).
            "batching": "static",
            "chunked_prefill": False,
            "queue": "fcfs",
            # K/V caches are dense buffers of max_batch_size x max_seq_len, allocated
            # for the whole sequence up front: 'max', contiguous (block 1).
            "kv_reservation": "max",
            "block_size_tokens": 1,
            "prefix_cache": "none",
            "preemption_mode": "recompute",  # unused: max reservation never preempts
        },
    ),
    "lightllm": Preset(
        "LightLLM: token-level KV (TokenAttention), a router that admits only what "
        "fits at peak, chunked prefills run apart from decodes, radix prompt cache.",
        {
            # Each step is a prefill or a decode, never both
            # (mode_backend/chunked_prefill/impl.py); chunked prefill is on unless
            # --disable_chunked_prefill.
            "batching": {"kind": "prefill_first", "chunked": True},
            "chunked_prefill": True,
            "queue": "fcfs",
            # Chunked mode: batch_max_tokens 16384 per prefill batch and
            # chunked_prefill_size = batch_max_tokens // 2 per request (LIGHTLLM_ARGS).
            "max_num_batched_tokens": 16384,
            "long_prefill_token_threshold": 8192,
            "max_num_seqs": 256,  # running_max_req_size default 256
            "block_size_tokens": 1,  # token-level KV (PAGE_SIZE 1 by default)
            # The router admits a request only if the peak of future KV use, from each
            # request's max_new_tokens, fits; requests then rarely pause. Closest here:
            # reserve prompt + the most output it may generate. (A client that sets
            # max_new_tokens to the true length is kv_reservation 'predicted' with an
            # oracle predictor.)
            "kv_reservation": "max",
            # Dynamic prompt cache (a radix tree) on unless --disable_dynamic_prompt_cache.
            "prefix_cache": "radix",
            "preemption_mode": "recompute",
        },
    ),
}
"""Preset name -> description and engine field values."""


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming it and the known ones otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown engine preset {name!r}; known: {', '.join(preset_names())}"
        ) from None


def apply_preset(engine: Mapping[str, Any]) -> dict[str, Any]:
    """``engine`` (a raw mapping of engine fields) with its ``preset``'s values filled
    in where it has no key; its own keys win. Returns a new dict; ``engine`` is not
    modified. Without a preset (absent or None), a plain copy."""
    name = engine.get("preset")
    if name is None:
        return dict(engine)
    values = copy.deepcopy(get_preset(name).engine)
    return {**values, **engine}
