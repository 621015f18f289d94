"""The reference Llama computes the right thing, and the serving loop schedules as orca."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.overrides import TorchFunctionMode  # noqa: E402

from calibration.reference import (  # noqa: E402
    ELEMENTWISE_OPS_PER_LAYER,
    GEMMS_PER_LAYER,
    KV_WRITES_PER_SEQUENCE_LAYER,
    ReferenceLlama,
    _Layer,
)
from calibration.serve import ServeLimits, Workload, serve, synthetic_workload  # noqa: E402
from simulator.conformance import TINY_MODEL  # noqa: E402
from simulator.model import ModelSpec  # noqa: E402

TINY = ModelSpec(**TINY_MODEL)  # 4 query heads over 2 KV heads: GQA


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny ops run fastest on one thread (and the test machine may be shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> ReferenceLlama:
    return ReferenceLlama(TINY, seed=0)


def _ids(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, n).tolist()


def _full_logits(model: ReferenceLlama, tokens: list[int]) -> torch.Tensor:
    return model.forward([tokens], [model.new_cache(len(tokens))], all_logits=True)


def test_incremental_decoding_matches_a_full_forward(model: ReferenceLlama) -> None:
    tokens = _ids(1, 48)
    full = _full_logits(model, tokens)
    cache = model.new_cache(48)
    # A prompt, a chunk after it (causal mask over a cached prefix), then one at a time.
    steps = [model.forward([tokens[:20]], [cache]), model.forward([tokens[20:30]], [cache])]
    steps += [model.forward([[t]], [cache]) for t in tokens[30:]]
    assert cache.num_tokens == 48
    incremental = torch.cat(steps)
    expected = full[[19, 29, *range(30, 48)]]
    torch.testing.assert_close(incremental, expected, rtol=1e-4, atol=1e-4)


def test_all_logits_ends_with_the_last_position_logits(model: ReferenceLlama) -> None:
    tokens = _ids(2, 12)
    last = model.forward([tokens], [model.new_cache(12)])
    torch.testing.assert_close(last[0], _full_logits(model, tokens)[-1])


def _expand_kv_heads(model: ReferenceLlama) -> ReferenceLlama:
    """The same model with every KV head repeated for its query group (plain MHA)."""
    s = model.spec
    group = s.num_heads // s.num_kv_heads
    mha = ReferenceLlama(s.model_copy(update={"num_kv_heads": s.num_heads}), seed=99)
    layers = []
    for layer in model.layers:
        q, k, v = layer.qkv.split([s.q_size, s.kv_size, s.kv_size])
        k, v = (w.view(s.num_kv_heads, s.head_dim, -1).repeat_interleave(group, dim=0)
                .reshape(s.q_size, -1) for w in (k, v))
        layers.append(_Layer(layer.input_norm, torch.cat([q, k, v]), layer.o_proj,
                             layer.post_norm, layer.gate_up, layer.down))
    mha.layers = tuple(layers)
    mha.embedding, mha.lm_head, mha.final_norm = model.embedding, model.lm_head, model.final_norm
    return mha


def test_grouped_query_attention_shares_each_kv_head_within_its_group(
    model: ReferenceLlama,
) -> None:
    assert TINY.num_kv_heads < TINY.num_heads
    tokens = _ids(3, 16)
    mha = _expand_kv_heads(model)
    decoded = []
    for m in (model, mha):  # prefill then a decode step, each through the cache
        cache = m.new_cache(17)
        m.forward([tokens], [cache])
        decoded.append(m.forward([[5]], [cache]))
    torch.testing.assert_close(decoded[0], decoded[1], rtol=1e-4, atol=1e-4)
    # ... and the grouping matters: the same weights with other heads paired differ.
    assert not torch.allclose(_full_logits(model, tokens), _full_logits(
        ReferenceLlama(TINY.model_copy(update={"num_kv_heads": 1}), seed=0), tokens))


def test_a_batch_computes_each_sequence_as_if_alone(model: ReferenceLlama) -> None:
    prompts = [_ids(10 + i, n) for i, n in enumerate((9, 17, 5, 30))]
    # Sequences 0 and 1 are decoding (different cache lengths); 2 and 3 prefill.
    inputs = [[7], [8], prompts[2], prompts[3]]
    alone, together = [], []
    for batched in (False, True):
        caches = [model.new_cache(len(p) + 1) for p in prompts]
        for p, c in zip(prompts[:2], caches[:2], strict=True):
            model.forward([p], [c])
        if batched:
            together.append(model.forward(inputs, caches))
        else:
            alone.extend(model.forward([x], [c]) for x, c in zip(inputs, caches, strict=True))
    torch.testing.assert_close(together[0], torch.cat(alone), rtol=1e-4, atol=1e-4)
    fresh = [model.new_cache(len(x)) for x in inputs[2:]]
    assert model.step(inputs[2:], fresh) == [int(row.argmax()) for row in torch.cat(alone[2:])]


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


_ELEMENTWISE = {"rms_norm", "roll", "mul", "addcmul", "cat", "add", "silu"}


def test_op_structure_is_what_the_cost_model_prices() -> None:
    """Per layer: the documented elementwise ops and 4 GEMMs over the whole batch, and
    per sequence two KV writes and one attention call."""
    counts = []
    num_seqs = 3
    for layers in (1, 2):
        m = ReferenceLlama(TINY.model_copy(update={"num_layers": layers}), seed=0)
        caches = [m.new_cache(8) for _ in range(num_seqs)]
        m.forward([[1, 2, 3]], caches[:1])
        with _CountCalls() as mode:
            m.forward([[4], [5, 6], [7, 8, 9]], caches)
        counts.append(mode.calls)
    per_layer = counts[1] - counts[0]
    assert sum(per_layer[name] for name in _ELEMENTWISE) == ELEMENTWISE_OPS_PER_LAYER
    assert per_layer["linear"] == GEMMS_PER_LAYER
    assert per_layer["scaled_dot_product_attention"] == num_seqs
    assert per_layer["__setitem__"] == KV_WRITES_PER_SEQUENCE_LAYER * num_seqs
    assert counts[0]["linear"] == GEMMS_PER_LAYER + 1  # the LM head, once


# ---- the serving loop ----

LIMITS = ServeLimits(max_num_seqs=4, max_num_batched_tokens=96, max_model_len=128)


@pytest.fixture(scope="module")
def served(model: ReferenceLlama):  # type: ignore[no-untyped-def]
    # Two bursts: requests queue behind max_num_seqs, and the loop idles between them.
    workload = synthetic_workload(np.random.default_rng(5), 24, rate_per_s=2000.0,
                                  prompt_tokens=(4, 64), output_tokens=(1, 16))
    workload.arrival_s[:] += 0.01
    workload.arrival_s[12:] += 0.1
    return workload, serve(model, workload, LIMITS, num_threads=1, warmup_rounds=1)


def test_every_request_finishes_with_its_output_tokens(served) -> None:  # type: ignore[no-untyped-def]
    workload, result = served
    req = result.requests
    assert (req["status"] == "finished").all()
    np.testing.assert_array_equal(req["generated_tokens"], workload.output_tokens)
    assert result.num_threads == 1


def test_iterations_respect_the_limits_and_add_up(served) -> None:  # type: ignore[no-untyped-def]
    workload, result = served
    it = result.iterations
    prompts, outputs = workload.prompt_tokens, workload.output_tokens
    assert (it["num_seqs"] <= LIMITS.max_num_seqs).all()
    assert (it["num_tokens"] <= LIMITS.max_num_batched_tokens).all()
    assert (it["num_tokens"] >= 1).all()
    assert it["num_prefill_tokens"].sum() == prompts.sum()
    assert it["num_prefill_seqs"].sum() == len(prompts)
    assert it["num_decode_seqs"].sum() == outputs.sum() - len(outputs)
    # Each decode step g = 1..o-1 of a request attends its prompt and g outputs.
    expected_context = (prompts * (outputs - 1) + outputs * (outputs - 1) // 2).sum()
    assert it["decode_context_tokens"].sum() == expected_context
    assert all(c == (0,) * len(p) for p, c in zip(it["prefill_tokens"],
                                                  it["prefill_context_tokens"], strict=True))
    assert (it["prefill_tokens"].map(sum) == it["num_prefill_tokens"]).all()
    assert (np.diff(it["start_s"]) > 0).all()
    assert (it[["schedule_s", "duration_s", "postprocess_s", "idle_s"]] >= 0).all().all()
    shapes = result.batch_shapes()
    assert [s.num_tokens for s in shapes] == it["num_tokens"].tolist()


def test_request_times_are_ordered_and_fcfs(served) -> None:  # type: ignore[no-untyped-def]
    _, result = served
    req = result.requests
    assert (req["arrival_s"] <= req["first_scheduled_s"]).all()
    assert (req["first_scheduled_s"] < req["first_token_s"]).all()
    assert (req["first_token_s"] <= req["finish_s"]).all()
    assert (req["ttft_s"] >= 0).all()
    assert np.isnan(req["tpot_s"][req["generated_tokens"] == 1]).all()
    assert (req["tpot_s"][req["generated_tokens"] >= 2] > 0).all()
    assert (np.diff(req["first_scheduled_s"]) >= 0).all()  # admitted in arrival order
    assert result.wall_s == pytest.approx(req["finish_s"].max())


def test_admission_stops_only_when_the_queue_head_does_not_fit(served) -> None:  # type: ignore[no-untyped-def]
    """Orca without chunking: a request that had arrived but was left waiting means the
    sequence slots were full or its whole prompt exceeded the budget left."""
    _, result = served
    req, it = result.requests, result.iterations
    arrival, scheduled = req["arrival_s"].to_numpy(), req["first_scheduled_s"].to_numpy()
    left_waiting = 0
    for row in it.itertuples():
        waiting = np.flatnonzero((arrival <= row.start_s) & (scheduled > row.start_s))
        if waiting.size:
            left_waiting += 1
            head_prompt = req["prompt_tokens"].iloc[waiting[0]]
            assert (row.num_seqs == LIMITS.max_num_seqs
                    or head_prompt > LIMITS.max_num_batched_tokens - row.num_tokens)
    assert left_waiting  # the workload does queue
    assert it["idle_s"].iloc[0] > 0  # waiting for the first arrival


def test_a_request_that_can_never_run_is_refused(model: ReferenceLlama) -> None:
    one = Workload(np.array([0.0]), np.array([100]), np.array([2]))
    with pytest.raises(ValueError, match="max_num_batched_tokens=96"):
        serve(model, one, LIMITS, warmup_rounds=0)
    too_long = Workload(np.array([0.0]), np.array([64]), np.array([65]))
    with pytest.raises(ValueError, match="max_model_len=128"):
        serve(model, too_long, LIMITS, warmup_rounds=0)
