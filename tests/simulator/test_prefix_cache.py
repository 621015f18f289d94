"""PrefixCache: chains of cached blocks, references, LRU eviction (unit level)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulator.prefix_cache import PrefixCache


def test_hits_are_whole_cached_blocks_of_the_prefix_leaving_the_last_token():
    cache = PrefixCache(block_size_tokens=16)
    assert cache.hit_blocks(7, prefix_tokens=100, known_tokens=200) == 0  # nothing cached
    cache.extend(7, 5)  # 80 tokens of chain 7
    assert cache.hit_blocks(7, prefix_tokens=100, known_tokens=200) == 5
    assert cache.hit_blocks(7, prefix_tokens=40, known_tokens=200) == 2  # 40 // 16
    # A prompt of exactly 64 shared tokens still computes its last one: 63 // 16 = 3.
    assert cache.hit_blocks(7, prefix_tokens=64, known_tokens=64) == 3
    assert cache.hit_blocks(8, prefix_tokens=100, known_tokens=200) == 0  # other content


def test_references_make_blocks_unevictable_and_release_returns_them():
    cache = PrefixCache(block_size_tokens=1)
    cache.extend(1, 10)
    assert cache.num_evictable == 10
    assert cache.acquire(1, 6) == 6  # six blocks newly referenced
    assert cache.acquire(1, 4) == 0  # already referenced by the first request
    assert cache.num_evictable == 4 and cache.num_held_total() == 6
    assert cache.release(1, 6) == 2  # blocks 4..5 now unreferenced; 0..3 still held
    assert cache.release(1, 4) == 4
    assert cache.num_evictable == 10 and cache.num_held_total() == 0
    cache.check()


def test_eviction_takes_the_least_recently_used_chain_first_from_its_tail():
    cache = PrefixCache(block_size_tokens=1)
    cache.extend(1, 4)
    cache.extend(2, 4)
    cache.extend(3, 4)
    cache.acquire(2, 2)  # a request uses chain 2: now the most recently used
    cache.release(2, 2)
    cache.evict(6)  # chain 1 (oldest) whole, then 2 blocks of chain 3's tail
    assert cache.num_cached(1) == 0
    assert cache.num_cached(3) == 2
    assert cache.num_cached(2) == 4
    cache.acquire(3, 2)  # chain 3's rest is referenced: eviction must skip it
    cache.evict(4)
    assert cache.num_cached(2) == 0 and cache.num_cached(3) == 2
    assert cache.num_evictable == 0
    cache.check()


@given(st.lists(st.tuples(st.sampled_from(["extend", "acquire", "release", "evict"]),
                          st.integers(0, 3), st.integers(0, 12)), max_size=60))
def test_counts_stay_consistent_under_any_sequence_of_operations(ops):
    # A reference model: per chain, cached blocks and the multiset of references. The
    # cache must agree on what is cached, held (max reference) and evictable.
    cache = PrefixCache(block_size_tokens=4)
    cached: dict[int, int] = {}
    refs: dict[int, list[int]] = {}
    for op, chain, n in ops:
        if op == "extend":
            cache.extend(chain, n)
            cached[chain] = max(cached.get(chain, 0), n)
        elif op == "acquire" and 0 < n <= cached.get(chain, 0):
            held = max(refs.get(chain, []), default=0)
            assert cache.acquire(chain, n) == max(0, n - held)
            refs.setdefault(chain, []).append(n)
        elif op == "release" and refs.get(chain):
            n = refs[chain].pop()
            held_after = max(refs[chain], default=0)
            assert cache.release(chain, n) == max(held_after, n) - held_after
        elif op == "evict":
            evictable = sum(c - max(refs.get(k, []), default=0) for k, c in cached.items())
            n = min(n, evictable)
            cache.evict(n)
            # Which chain lost blocks is the LRU order's business; totals are the model's.
            for k in list(cached):
                cached[k] = cache.num_cached(k)
        cache.check()
        for k, c in cached.items():
            assert cache.num_cached(k) == c
            assert cache.num_held(k) == max(refs.get(k, []), default=0) <= c
