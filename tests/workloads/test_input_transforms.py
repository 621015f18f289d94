"""Input transforms: prompt compression, retrieval and Skeleton-of-Thought on request arrays,
their chaining and seeding, the dependency columns of RequestArrays, and validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from workloads.config import (
    FixedLength,
    InputTransform,
    PoissonArrivals,
    PromptCompression,
    Retrieval,
    SkeletonOfThought,
    SyntheticWorkload,
    TraceWorkload,
    UniformLength,
    WorkloadConfig,
)
from workloads.generate import open_loop_arrival_times, open_loop_requests
from workloads.trace import RequestArrays
from workloads.transforms import (
    apply_transforms,
    compress_prompts,
    retrieve,
    skeleton_of_thought,
)

TRANSFORM: TypeAdapter[PromptCompression | Retrieval | SkeletonOfThought] = TypeAdapter(
    InputTransform
)


def arrays(prompt: list[int], output: list[int] | None = None, **optional: object
           ) -> RequestArrays:
    n = len(prompt)
    return RequestArrays(
        np.arange(n, dtype=np.float64),
        np.array(prompt, dtype=np.int64),
        np.array(output if output is not None else [10] * n, dtype=np.int64),
        **{k: np.asarray(v) for k, v in optional.items()},
    )


def compression(**fields: object) -> PromptCompression:
    base: dict[str, object] = {"compressor_s_per_token": 2e-5, "compressor_fixed_s": 0.005}
    return PromptCompression.model_validate({**base, **fields})


def synthetic(*transforms: dict[str, object], **changes: object) -> SyntheticWorkload:
    base: dict[str, object] = {
        "arrival": {"kind": "poisson", "rate_per_s": 10.0},
        "prompt_tokens": {"kind": "lognormal", "median_tokens": 500, "sigma": 1.0},
        "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 1000},
        "transforms": list(transforms),
    }
    return SyntheticWorkload.model_validate({**base, **changes})


def generate(workload: SyntheticWorkload | TraceWorkload, seed: int = 0,
             num_requests: int | None = 200) -> RequestArrays:
    return open_loop_requests(workload, num_requests=num_requests, duration_s=None,
                              rng=np.random.default_rng(seed))


def assert_same(a: RequestArrays, b: RequestArrays) -> None:
    for field, x, y in zip(a._fields, a, b, strict=True):
        assert (x is None and y is None) or (
            x is not None and y is not None and x.dtype == y.dtype and np.array_equal(x, y)
        ), field


RETRIEVAL = {"kind": "retrieval", "latency_s": 0.05,
             "retrieved_tokens": {"kind": "uniform", "min_tokens": 100, "max_tokens": 3000}}
SOT = {"kind": "skeleton_of_thought", "num_points": 4, "skeleton_tokens": 60}
COMPRESS = {"kind": "prompt_compression", "ratio": 4, "compressor_s_per_token": 2e-5,
            "compressor_fixed_s": 0.005}


# ---------------------------------------------------------------- prompt compression


def test_compression_by_ratio_gives_exact_ceilings_and_compressor_time() -> None:
    prompt = [1, 3, 4, 5, 8, 1000, 1001]
    out = compress_prompts(arrays(prompt), compression(ratio=4))
    assert out.prompt_tokens.tolist() == [1, 1, 1, 2, 2, 250, 251]
    assert out.prompt_tokens.dtype == np.int64
    assert out.preprocess_s is not None
    np.testing.assert_allclose(out.preprocess_s, 0.005 + 2e-5 * np.array(prompt), rtol=0,
                               atol=1e-15)
    assert out.output_tokens.tolist() == [10] * 7
    assert out.arrival_s.tolist() == list(range(7))  # the client's arrival is kept
    assert out.depends_on is None and out.group_id is None


def test_compression_to_a_target_cuts_only_longer_prompts_and_times_only_those() -> None:
    out = compress_prompts(arrays([10, 512, 513, 4000]),
                           compression(target_tokens=512, compressor_fixed_s=0.01))
    assert out.prompt_tokens.tolist() == [10, 512, 512, 512]
    assert out.preprocess_s is not None
    assert out.preprocess_s.tolist() == [0.0, 0.0, 0.01 + 2e-5 * 513, 0.01 + 2e-5 * 4000]


def test_compression_drops_the_shared_prefix_of_shortened_prompts_only() -> None:
    requests = arrays([100, 600, 700], prefix_id=[3, 3, -1], prefix_tokens=[50, 50, 0])
    out = compress_prompts(requests, compression(target_tokens=512))
    assert out.prefix_id is not None and out.prefix_tokens is not None
    assert out.prefix_id.tolist() == [3, -1, -1]
    assert out.prefix_tokens.tolist() == [50, 0, 0]
    ratio = compress_prompts(requests, compression(ratio=2))
    assert ratio.prefix_id is not None and ratio.prefix_id.tolist() == [-1, -1, -1]
    plain = compress_prompts(arrays([100, 600]), compression(ratio=2))
    assert plain.prefix_id is None and plain.prefix_tokens is None


def test_compression_adds_to_an_existing_delay() -> None:
    requests = arrays([400, 800], preprocess_s=[0.25, 0.5])
    out = compress_prompts(requests, compression(ratio=2, compressor_s_per_token=1e-3,
                                                 compressor_fixed_s=0.0))
    assert out.preprocess_s is not None
    np.testing.assert_allclose(out.preprocess_s, [0.25 + 0.4, 0.5 + 0.8])
    assert requests.preprocess_s is not None and requests.preprocess_s.tolist() == [0.25, 0.5]


# ---------------------------------------------------------------- retrieval


def test_retrieval_adds_its_tokens_and_latency_and_keeps_the_prefix() -> None:
    requests = arrays([100, 200, 300], prefix_id=[0, -1, 0], prefix_tokens=[40, 0, 40])
    config = Retrieval(retrieved_tokens=FixedLength(tokens=2000), latency_s=0.05)
    out = retrieve(requests, config, np.random.default_rng(0))
    assert out.prompt_tokens.tolist() == [2100, 2200, 2300]
    assert out.preprocess_s is not None and out.preprocess_s.tolist() == [0.05] * 3
    assert out.prefix_id is not None and out.prefix_id.tolist() == [0, -1, 0]
    assert out.prefix_tokens is not None and out.prefix_tokens.tolist() == [40, 0, 40]


def test_retrieval_draws_from_the_transform_stream_and_leaves_the_others_alone() -> None:
    seed, n = 7, 300
    base = generate(synthetic(), seed, n)
    with_rag = generate(synthetic(RETRIEVAL), seed, n)
    # The documented layout: five workload children, then one for the transforms, of
    # which each transform gets one child.
    rng = np.random.default_rng(seed)
    rng.spawn(5)
    (transform_rng,) = rng.spawn(1)
    (child,) = transform_rng.spawn(1)
    expected = UniformLength(min_tokens=100, max_tokens=3000).sample(child, n)
    assert np.array_equal(with_rag.prompt_tokens - base.prompt_tokens, expected)
    assert np.array_equal(with_rag.arrival_s, base.arrival_s)
    assert np.array_equal(with_rag.output_tokens, base.output_tokens)
    assert with_rag.preprocess_s is not None and (with_rag.preprocess_s == 0.05).all()
    assert len(np.unique(expected)) > 1  # drawn, not constant


def test_appending_a_transform_leaves_earlier_draws_unchanged() -> None:
    one = generate(synthetic(RETRIEVAL), 3)
    two = generate(synthetic(RETRIEVAL, RETRIEVAL), 3)
    added_first = one.prompt_tokens - generate(synthetic(), 3).prompt_tokens
    added_both = two.prompt_tokens - generate(synthetic(), 3).prompt_tokens
    second = added_both - added_first
    assert (second >= 100).all() and (second <= 3000).all()
    assert not np.array_equal(second, added_first)  # its own stream
    assert two.preprocess_s is not None
    np.testing.assert_allclose(two.preprocess_s, 0.1)


# ---------------------------------------------------------------- Skeleton-of-Thought


def test_skeleton_of_thought_expands_each_request_into_dependent_parts() -> None:
    requests = arrays(
        [100, 250], [10, 7], priority=[2, 0], ttft_slo_s=[0.5, np.nan],
        prefix_id=[4, -1], prefix_tokens=[30, 0], preprocess_s=[0.2, 0.3],
    )
    config = SkeletonOfThought(num_points=3, skeleton_tokens=40, skeleton_prompt_tokens=100,
                               point_prompt_tokens=20)
    out = skeleton_of_thought(requests, config)
    assert len(out.arrival_s) == 2 * (1 + 3)
    assert out.arrival_s.tolist() == [0.0] * 4 + [1.0] * 4
    assert out.prompt_tokens.tolist() == [200, 160, 160, 160, 350, 310, 310, 310]
    assert out.output_tokens.tolist() == [40, 4, 4, 4, 40, 3, 3, 3]  # ceil(10/3), ceil(7/3)
    assert out.depends_on is not None and out.group_id is not None
    assert out.depends_on.tolist() == [-1, 0, 0, 0, -1, 4, 4, 4]
    assert out.group_id.tolist() == [0, 0, 0, 0, 4, 4, 4, 4]
    assert out.preprocess_s is not None
    assert out.preprocess_s.tolist() == [0.2, 0, 0, 0, 0.3, 0, 0, 0]
    assert out.priority is not None and out.priority.tolist() == [2] * 4 + [0] * 4
    assert out.ttft_slo_s is not None
    assert np.array_equal(out.ttft_slo_s, [0.5] * 4 + [np.nan] * 4, equal_nan=True)
    assert out.prefix_id is not None and out.prefix_id.tolist() == [4] * 4 + [-1] * 4
    assert out.prefix_tokens is not None and out.prefix_tokens.tolist() == [30] * 4 + [0] * 4
    for column in (out.prompt_tokens, out.output_tokens, out.depends_on, out.group_id):
        assert column.dtype == np.int64


def test_skeleton_of_thought_defaults_and_no_delay_column_without_one() -> None:
    out = skeleton_of_thought(arrays([500], [100]),
                              SkeletonOfThought(num_points=4, skeleton_tokens=60))
    assert out.prompt_tokens.tolist() == [600] + [620] * 4  # +100; +60 + 60 skeleton
    assert out.output_tokens.tolist() == [60, 25, 25, 25, 25]
    assert out.preprocess_s is None and out.priority is None and out.prefix_id is None


def test_skeleton_of_thought_refuses_requests_that_already_have_dependencies() -> None:
    once = skeleton_of_thought(arrays([5]), SkeletonOfThought(num_points=2, skeleton_tokens=3))
    with pytest.raises(ValueError, match=r"skeleton_of_thought: .* last transform"):
        skeleton_of_thought(once, SkeletonOfThought(num_points=2, skeleton_tokens=3))


# ---------------------------------------------------------------- chains and wiring


def test_order_of_transforms_matters() -> None:
    requests = arrays([1000])
    rag = TRANSFORM.validate_python({**RETRIEVAL, "retrieved_tokens": {"kind": "fixed",
                                                                       "tokens": 2000}})
    squeeze = TRANSFORM.validate_python(COMPRESS)
    rng = np.random.default_rng(0)
    rag_first = apply_transforms(requests, (rag, squeeze), rng)
    squeeze_first = apply_transforms(requests, (squeeze, rag), rng)
    assert rag_first.prompt_tokens.tolist() == [750]  # ceil(3000 / 4)
    assert squeeze_first.prompt_tokens.tolist() == [2250]  # ceil(1000 / 4) + 2000
    assert rag_first.preprocess_s is not None and squeeze_first.preprocess_s is not None
    np.testing.assert_allclose(rag_first.preprocess_s, [0.05 + 0.005 + 2e-5 * 3000])
    np.testing.assert_allclose(squeeze_first.preprocess_s, [0.005 + 2e-5 * 1000 + 0.05])


def test_full_chain_through_open_loop_requests() -> None:
    fixed_rag = {**RETRIEVAL, "retrieved_tokens": {"kind": "fixed", "tokens": 2000}}
    base = generate(synthetic(), 1, 50)
    out = generate(synthetic(fixed_rag, COMPRESS, SOT), 1, 50)
    assert len(out.arrival_s) == 50 * 5  # num_requests counts client requests
    skeleton = out.take(np.arange(0, 250, 5))
    expected_prompt = -(-(base.prompt_tokens + 2000) // 4)
    assert np.array_equal(skeleton.prompt_tokens, expected_prompt + 100)
    assert np.array_equal(skeleton.arrival_s, base.arrival_s)
    assert skeleton.preprocess_s is not None
    np.testing.assert_allclose(skeleton.preprocess_s,
                               0.05 + 0.005 + 2e-5 * (base.prompt_tokens + 2000))
    points = out.output_tokens.reshape(50, 5)[:, 1:]
    assert np.array_equal(points, np.repeat(-(-base.output_tokens // 4)[:, None], 4, axis=1))


def test_without_transforms_the_arrays_are_bit_identical_to_the_plain_streams() -> None:
    workload = synthetic()
    rng = np.random.default_rng(11)
    out = open_loop_requests(workload, num_requests=500, duration_s=None, rng=rng)
    assert rng.bit_generator.seed_seq.n_children_spawned == 5  # type: ignore[attr-defined]
    arrival_rng, prompt_rng, output_rng, _, _ = np.random.default_rng(11).spawn(5)
    assert isinstance(workload.arrival, PoissonArrivals)
    arrival_s = open_loop_arrival_times(workload.arrival, arrival_rng, num_requests=500,
                                        duration_s=None)
    assert_same(out, RequestArrays(arrival_s, workload.prompt_tokens.sample(prompt_rng, 500),
                                   workload.output_tokens.sample(output_rng, 500)))
    assert out.dependencies() is None
    with_rag = np.random.default_rng(11)
    open_loop_requests(synthetic(RETRIEVAL), num_requests=5, duration_s=None, rng=with_rag)
    assert with_rag.bit_generator.seed_seq.n_children_spawned == 6  # type: ignore[attr-defined]


def write_trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    rows = "".join(f"{t},{100 * (t + 1)},{9 + t}\n" for t in range(6))
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + rows)
    return path


def test_trace_transforms_apply_after_the_bounds_and_keep_the_reader_stream(
    tmp_path: Path,
) -> None:
    path = write_trace(tmp_path)
    plain = TraceWorkload(path=path, sample_frac=0.6)
    transformed = TraceWorkload.model_validate(
        {"path": path, "sample_frac": 0.6, "transforms": [COMPRESS, SOT]})
    a = generate(plain, 5, num_requests=3)
    b = generate(transformed, 5, num_requests=3)
    assert a.dependencies() is None
    assert len(b.arrival_s) == len(a.arrival_s) * 5
    assert np.array_equal(b.arrival_s[::5], a.arrival_s)  # same rows sampled
    assert np.array_equal(b.prompt_tokens[::5], -(-a.prompt_tokens // 4) + 100)
    assert np.array_equal(b.output_tokens[1::5], -(-a.output_tokens // 4))


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.lists(st.integers(1, 5000), min_size=1, max_size=30),
    chain=st.lists(st.sampled_from(["compress", "target", "rag"]), max_size=3),
    sot=st.booleans(),
    num_points=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_transformed_arrays_keep_their_invariants(
    prompt: list[int], chain: list[str], sot: bool, num_points: int, seed: int
) -> None:
    configs = {
        "compress": COMPRESS,
        "target": {**COMPRESS, "ratio": None, "target_tokens": 300},
        "rag": RETRIEVAL,
    }
    steps = [configs[c] for c in chain]
    if sot:
        steps.append({**SOT, "num_points": num_points})
    transforms = tuple(TRANSFORM.validate_python(s) for s in steps)
    n = len(prompt)
    requests = arrays(sorted(prompt), list(range(1, n + 1)),
                      prefix_id=[0] * n, prefix_tokens=[1] * n)
    out = apply_transforms(requests, transforms, np.random.default_rng(seed))
    assert (np.diff(out.arrival_s) >= 0).all()
    assert (out.prompt_tokens >= 1).all() and (out.output_tokens >= 1).all()
    assert out.prefix_tokens is not None and (out.prefix_tokens <= out.prompt_tokens).all()
    deps = out.dependencies()
    if not steps:
        assert deps is None
        return
    assert deps is not None
    rows = np.arange(len(out.arrival_s))
    linked = deps.depends_on >= 0
    assert (deps.depends_on[linked] < rows[linked]).all()  # parents come first
    assert np.array_equal(out.arrival_s[deps.depends_on[linked]], out.arrival_s[linked])
    assert (deps.group_id <= rows).all() and (deps.preprocess_s >= 0).all()
    assert len(out.arrival_s) == n * (1 + num_points if sot else 1)
    if sot:  # the points carry at least the whole answer
        total = np.bincount(deps.group_id[linked], out.output_tokens[linked],
                            minlength=len(rows))
        assert (total[~linked] >= np.arange(1, n + 1)).all()


# ---------------------------------------------------------------- RequestArrays columns


def test_take_renumbers_dependencies_and_refuses_to_split_a_group() -> None:
    out = skeleton_of_thought(arrays([5, 6, 7]),
                              SkeletonOfThought(num_points=2, skeleton_tokens=3))
    tail = out.take(slice(3, 9))
    assert tail.depends_on is not None and tail.group_id is not None
    assert tail.depends_on.tolist() == [-1, 0, 0, -1, 3, 3]
    assert tail.group_id.tolist() == [0, 0, 0, 3, 3, 3]
    picked = out.take(np.array([6, 7, 8, 0, 1, 2]))
    assert picked.depends_on is not None and picked.depends_on.tolist() == [-1, 0, 0, -1, 3, 3]
    with pytest.raises(ValueError, match="row 4 is taken but its depends_on row 3 is not"):
        out.take(slice(4, 9))


def test_dependencies_fill_defaults_for_unset_columns() -> None:
    assert arrays([1, 2, 3]).dependencies() is None
    deps = arrays([1, 2, 3], preprocess_s=[0.1, 0.2, 0.3]).dependencies()
    assert deps is not None
    assert deps.depends_on.tolist() == [-1, -1, -1]
    assert deps.group_id.tolist() == [0, 1, 2]
    assert deps.preprocess_s.tolist() == [0.1, 0.2, 0.3]
    assert arrays([1, 2]).attributes() is None  # attributes() is unchanged by the new columns


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**COMPRESS, "ratio": 0.5}, r"ratio\n.*greater than or equal to 1.*input_value=0\.5"),
        ({**COMPRESS, "target_tokens": 512}, r"exactly one of ratio \(4\.0\) and target_tokens "
                                             r"\(512\)"),
        ({**COMPRESS, "ratio": None}, r"exactly one of ratio \(None\) and target_tokens \(None\)"),
        ({**COMPRESS, "ratio": None, "target_tokens": 0}, r"target_tokens\n.*input_value=0"),
        ({**COMPRESS, "compressor_s_per_token": -1e-5},
         r"compressor_s_per_token\n.*input_value=-1e-05"),
        ({k: v for k, v in COMPRESS.items() if k != "compressor_fixed_s"},
         r"compressor_fixed_s\n\s+Field required"),
        ({**RETRIEVAL, "latency_s": -0.1}, r"latency_s\n.*input_value=-0\.1"),
        ({**RETRIEVAL, "retrieved_tokens": {"kind": "fixed", "tokens": 0}},
         r"retrieved_tokens\.fixed\.tokens\n.*input_value=0"),
        ({**SOT, "num_points": 0}, r"num_points\n.*input_value=0"),
        ({**SOT, "skeleton_tokens": 0}, r"skeleton_tokens\n.*input_value=0"),
        ({**SOT, "point_prompt_tokens": -3}, r"point_prompt_tokens\n.*input_value=-3"),
        ({**SOT, "points": 3}, r"points\n\s+Extra inputs are not permitted"),
        ({"kind": "summarise"}, r"'prompt_compression', 'retrieval', 'skeleton_of_thought'"),
    ],
)
def test_bad_transforms_are_rejected_naming_the_field_and_value(
    data: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        TRANSFORM.validate_python(data)


def test_skeleton_of_thought_must_come_last_and_once() -> None:
    with pytest.raises(ValidationError, match=r"must be the last transform.*position\(s\) "
                                              r"\[0\] \(from 0\) of 2"):
        synthetic(SOT, COMPRESS)
    with pytest.raises(ValidationError, match=r"position\(s\) \[0, 1\] \(from 0\) of 2"):
        TypeAdapter(WorkloadConfig).validate_python(
            {"kind": "trace", "path": "t.csv", "transforms": [SOT, SOT]})
    assert synthetic(COMPRESS, RETRIEVAL, SOT).transforms[-1].kind == "skeleton_of_thought"


def test_transforms_need_open_loop_arrivals() -> None:
    with pytest.raises(ValidationError, match=r"transforms \(\['retrieval'\]\) need open-loop"):
        synthetic(RETRIEVAL, arrival={"kind": "closed_loop", "concurrency": 4})
    assert synthetic(arrival={"kind": "closed_loop", "concurrency": 4}).transforms == ()


@pytest.mark.parametrize("model", [PromptCompression, Retrieval, SkeletonOfThought],
                         ids=lambda m: m.__name__)
def test_every_field_is_described_and_the_model_frozen(model: type[BaseModel]) -> None:
    assert model.__doc__ and model.__doc__.strip()
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
