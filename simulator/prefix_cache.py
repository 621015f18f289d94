"""Prefix cache: KV blocks kept after their request is done, for requests that share a prefix.

A request names its shared content by ``prefix_id`` (``Request.prefix_id``): requests
with the same id have identical first tokens, so the cache is one chain of blocks per
id, filled from the start. Running requests reference a prefix of their chain; blocks
nobody references stay cached and are evicted, least recently used chain first and
from the chain's tail, when allocation needs the room (vLLM's free-block queue and
SGLang's radix-tree leaves both evict that way).

Two granularities, as the systems users know:

- ``hashed`` (vLLM's automatic prefix caching): blocks of the engine's block size are
  shared only when full, and a request always computes at least its last prompt token,
  so a hit is ``min(cached, prefix, prompt - 1)`` rounded down to whole blocks;
- ``radix`` (SGLang's RadixAttention): matching is token-granular; with a block size
  above 1 (SGLang's ``page_size``) hits are rounded down to pages as SGLang does.

With one chain per request both find the same hits at equal granularity; what differs
is the granularity. Sharing trees (a session's history below a tenant's system prompt)
are not expressed by one id: a request shares with the requests of its own id only.

The cache counts blocks, not contents: ``held`` blocks are referenced by running
requests (the replica counts them as used, once per chain), the rest are evictable and
count as free to admission, as in vLLM.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class PrefixCache:
    """Chains of cached KV blocks by prefix id, with reference counts and LRU eviction."""

    def __init__(self, block_size_tokens: int) -> None:
        self.block = block_size_tokens
        self._cached: dict[int, int] = {}  # chain -> blocks cached (held or evictable)
        self._refs: dict[int, Counter[int]] = {}  # chain -> {blocks referenced: requests}
        self._held: dict[int, int] = {}  # chain -> most blocks any running request references
        self._lru: OrderedDict[int, None] = OrderedDict()  # chains, least recently used first
        self.num_evictable = 0
        self.num_evicted = 0
        self._num_held = 0

    def num_cached(self, chain: int) -> int:
        return self._cached.get(chain, 0)

    def num_held(self, chain: int) -> int:
        return self._held.get(chain, 0)

    def hit_blocks(self, chain: int, prefix_tokens: int, known_tokens: int) -> int:
        """Blocks of ``chain`` an admitted request with ``prefix_tokens`` of it (and
        ``known_tokens`` to compute in all) can reuse: it computes its last token."""
        shareable = min(prefix_tokens, known_tokens - 1) // self.block
        return min(self._cached.get(chain, 0), shareable)

    def acquire(self, chain: int, blocks: int) -> int:
        """A request now references the first ``blocks`` blocks of ``chain`` (all cached);
        returns how many blocks became referenced that were not."""
        if blocks <= 0:
            return 0
        assert blocks <= self._cached.get(chain, 0)
        self._refs.setdefault(chain, Counter())[blocks] += 1
        return self._set_held(chain, max(self._held.get(chain, 0), blocks))

    def release(self, chain: int, blocks: int) -> int:
        """A request stops referencing ``blocks`` blocks of ``chain``; returns how many
        blocks are no longer referenced by anyone (now evictable)."""
        if blocks <= 0:
            return 0
        refs = self._refs[chain]
        refs[blocks] -= 1
        if not refs[blocks]:
            del refs[blocks]
        new_held = max(refs, default=0)
        if not refs:
            del self._refs[chain]
        return -self._set_held(chain, new_held)

    def extend(self, chain: int, blocks: int) -> None:
        """A request holding ``chain``'s first ``blocks`` blocks (computed, full) offers
        them to the cache; blocks it is the first to compute join the chain. The caller
        then moves its reference to the new length (``release`` the old, ``acquire``)."""
        cached = self._cached.get(chain, 0)
        if blocks > cached:
            self._cached[chain] = blocks
            # The new blocks are referenced by the offering request (it re-acquires them).
            self.num_evictable += blocks - cached
            self._touch(chain)

    def evict(self, blocks: int) -> None:
        """Free ``blocks`` unreferenced blocks: least recently used chains first, each from
        its tail. The caller never asks for more than are evictable."""
        assert blocks <= self.num_evictable, (blocks, self.num_evictable)
        while blocks > 0:
            chain = next(iter(self._lru))
            cached, held = self._cached[chain], self._held.get(chain, 0)
            take = min(blocks, cached - held)
            cached -= take
            blocks -= take
            self.num_evictable -= take
            self.num_evicted += take
            if cached == held:
                del self._lru[chain]
            if cached:
                self._cached[chain] = cached
            else:
                del self._cached[chain]

    def _set_held(self, chain: int, held: int) -> int:
        old = self._held.get(chain, 0)
        if held:
            self._held[chain] = held
        else:
            self._held.pop(chain, None)
        self.num_evictable -= held - old
        self._num_held += held - old
        self._touch(chain)
        return held - old

    def _touch(self, chain: int) -> None:
        """Mark ``chain`` most recently used (and listed only if it has evictable blocks)."""
        if self._cached.get(chain, 0) > self._held.get(chain, 0):
            self._lru[chain] = None
            self._lru.move_to_end(chain)
        else:
            self._lru.pop(chain, None)

    def num_held_total(self) -> int:
        """Blocks referenced by running requests, all chains together."""
        return self._num_held

    def references(self) -> list[tuple[int, int]]:
        """Sorted (chain, blocks) of every running request's reference (for checks)."""
        return sorted((chain, blocks) for chain, refs in self._refs.items()
                      for blocks, count in refs.items() for _ in range(count))

    def check(self) -> None:
        """Counts agree with a recount."""
        assert self._num_held == sum(self._held.values())
        assert self.num_evictable == sum(
            c - self._held.get(k, 0) for k, c in self._cached.items()
        )
        for chain, refs in self._refs.items():
            assert self._held.get(chain, 0) == max(refs) <= self._cached[chain]
        assert set(self._lru) == {k for k, c in self._cached.items() if c > self._held.get(k, 0)}
