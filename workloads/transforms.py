"""Input transforms: what happens to requests between the client and the engine.

A workload's ``transforms`` (:data:`workloads.config.InputTransform`) are applied in
order to its requests once they are generated or loaded (and cut to the run's
bounds). Each maps a :class:`~workloads.trace.RequestArrays` to another and models
token counts and time only, never answer quality:

- ``prompt_compression`` shortens prompts and adds the compressor's time to
  ``preprocess_s``;
- ``retrieval`` lengthens prompts by retrieved context and adds the retrieval time;
- ``skeleton_of_thought`` splits each request into a skeleton request and point
  requests that ``depends_on`` it, all of one ``group_id``.

``arrival_s`` stays the client's arrival, so latencies can be measured from it; the
engine sees a request ``preprocess_s`` after it is issued (see ``RequestArrays``).
"""

from __future__ import annotations

import numpy as np

from workloads.config import InputTransform, PromptCompression, Retrieval, SkeletonOfThought
from workloads.trace import RequestArrays

__all__ = ["apply_transforms", "compress_prompts", "retrieve", "skeleton_of_thought"]


def apply_transforms(requests: RequestArrays, transforms: tuple[InputTransform, ...],
                     rng: np.random.Generator) -> RequestArrays:
    """``requests`` after each transform in turn (a new RequestArrays; the input is not
    modified). One child generator is spawned from ``rng`` per transform, in list order
    (those that draw nothing get one too), so appending a transform leaves the draws of
    the ones before it unchanged. Rows stay sorted by ``arrival_s``."""
    if not transforms:
        return requests
    for transform, child in zip(transforms, rng.spawn(len(transforms)), strict=True):
        if isinstance(transform, PromptCompression):
            requests = compress_prompts(requests, transform)
        elif isinstance(transform, Retrieval):
            requests = retrieve(requests, transform, child)
        else:
            assert isinstance(transform, SkeletonOfThought)
            requests = skeleton_of_thought(requests, transform)
    return requests


def compress_prompts(requests: RequestArrays, config: PromptCompression) -> RequestArrays:
    """Prompts compressed to ``ceil(p / ratio)`` or ``min(p, target_tokens)`` tokens (at
    least 1), each compressed request delayed by ``compressor_fixed_s +
    compressor_s_per_token * p`` (p: its prompt before compression). With
    ``target_tokens``, a prompt within the budget is not read and not delayed. A
    shortened prompt's shared prefix is dropped (prefix_id -1, prefix_tokens 0)."""
    prompt = requests.prompt_tokens
    if config.ratio is not None:
        compressed = np.ceil(prompt / config.ratio).astype(np.int64)
        read = np.ones(len(prompt), dtype=bool)
    else:
        assert config.target_tokens is not None  # the config holds exactly one
        compressed = np.minimum(prompt, config.target_tokens)
        read = prompt > config.target_tokens
    compressed = np.maximum(compressed, 1)
    delay_s = np.where(read, config.compressor_fixed_s
                       + config.compressor_s_per_token * prompt, 0.0)
    requests = _delayed(requests, delay_s)._replace(prompt_tokens=compressed)
    if requests.prefix_id is None:
        return requests
    shortened = compressed < prompt
    prefix_tokens = requests.prefix_tokens
    assert prefix_tokens is not None  # prefix columns are set together
    return requests._replace(prefix_id=np.where(shortened, -1, requests.prefix_id),
                             prefix_tokens=np.where(shortened, 0, prefix_tokens))


def retrieve(requests: RequestArrays, config: Retrieval,
             rng: np.random.Generator) -> RequestArrays:
    """Each prompt lengthened by retrieved tokens drawn from ``config.retrieved_tokens``
    with ``rng`` (one draw per request, in row order) and delayed by ``latency_s``. The
    retrieved context follows the shared prefix, so prefix columns are unchanged."""
    n = len(requests.arrival_s)
    retrieved = config.retrieved_tokens.sample(rng, n)
    return _delayed(requests, np.full(n, config.latency_s))._replace(
        prompt_tokens=requests.prompt_tokens + retrieved)


def skeleton_of_thought(requests: RequestArrays, config: SkeletonOfThought) -> RequestArrays:
    """Each request as a skeleton request followed by ``num_points`` point requests.

    Row i of ``requests`` becomes rows ``g = i * (1 + num_points)`` (the skeleton) to
    ``g + num_points`` (the points), so rows stay in arrival order. The skeleton keeps
    the request's arrival, preprocessing delay, priority, TTFT target and prefix; its
    prompt grows by ``skeleton_prompt_tokens`` and its output is ``skeleton_tokens``. A
    point request has prompt p + ``point_prompt_tokens`` + ``skeleton_tokens``, output
    ceil(o / num_points), ``depends_on`` g (it is issued when the skeleton finishes) and
    no preprocessing delay; its arrival_s is the skeleton's, a placeholder. Every part
    has ``group_id`` g.

    Raises ValueError if ``requests`` already has dependencies (Skeleton-of-Thought is
    the last transform).
    """
    if requests.depends_on is not None or requests.group_id is not None:
        raise ValueError(
            "skeleton_of_thought: the requests already depend on each other; it must be "
            "the last transform and appear once"
        )
    n, k = len(requests.arrival_s), config.num_points
    parts = 1 + k
    group = np.repeat(np.arange(n, dtype=np.int64) * parts, parts)
    is_skeleton = np.tile(np.arange(parts) == 0, n)
    prompt = np.repeat(requests.prompt_tokens, parts) + np.where(
        is_skeleton, config.skeleton_prompt_tokens,
        config.point_prompt_tokens + config.skeleton_tokens)
    point_output = -(-requests.output_tokens // k)  # ceil for positive integers
    output = np.where(is_skeleton, config.skeleton_tokens, np.repeat(point_output, parts))
    preprocess_s = None
    if requests.preprocess_s is not None:
        preprocess_s = np.where(is_skeleton, np.repeat(requests.preprocess_s, parts), 0.0)

    def repeated(column: np.ndarray | None) -> np.ndarray | None:
        return None if column is None else np.repeat(column, parts)

    return RequestArrays(
        np.repeat(requests.arrival_s, parts),
        prompt.astype(np.int64),
        output.astype(np.int64),
        priority=repeated(requests.priority),
        ttft_slo_s=repeated(requests.ttft_slo_s),
        prefix_id=repeated(requests.prefix_id),
        prefix_tokens=repeated(requests.prefix_tokens),
        depends_on=np.where(is_skeleton, -1, group),
        group_id=group,
        preprocess_s=preprocess_s,
    )


def _delayed(requests: RequestArrays, delay_s: np.ndarray) -> RequestArrays:
    """``requests`` with ``delay_s`` (float64 s per row) added to ``preprocess_s``."""
    before = requests.preprocess_s
    return requests._replace(preprocess_s=delay_s if before is None else before + delay_s)
