"""The paged KV cache's bookkeeping: fixed-size blocks, reference counts, prefix hashes.

This module holds no tensors. A block is an index into the model runner's KV
tensors; :class:`BlockPool` decides which indices are free, which are shared
between sequences, and which hold a cached prefix nobody uses right now (those
are evicted least recently used first when a new block is needed).

A *full* block is identified by :func:`block_hash`, a digest chained over its
parent block's hash and its own token ids, so equal hashes mean equal whole
prefixes, not only equal blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence

__all__ = ["BlockHash", "BlockPool", "block_hash", "prefix_block_hashes"]

BlockHash = bytes

_ROOT = b"meridian-kv-root"


def block_hash(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Digest of a full block: its tokens, chained to the block before it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent if parent is not None else _ROOT)
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in token_ids))
    return h.digest()


def prefix_block_hashes(
    token_ids: Sequence[int], block_size: int, start: Sequence[BlockHash] = ()
) -> list[BlockHash]:
    """Hashes of every full block of ``token_ids``, continuing from the known ``start``."""
    hashes = list(start)
    for i in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(block_hash(parent, token_ids[i * block_size : (i + 1) * block_size]))
    return hashes


class BlockPool:
    """Reference-counted KV blocks with an LRU of unreferenced cached prefixes."""

    def __init__(self, num_blocks: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("a KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self._refs = [0] * num_blocks
        self._hash_of: list[BlockHash | None] = [None] * num_blocks
        self._by_hash: dict[BlockHash, int] = {}
        # blocks holding nothing worth keeping
        self._free: deque[int] = deque(range(num_blocks))
        # unreferenced blocks holding a cached prefix, least recently used first
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks that :meth:`allocate` can hand out (free or evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks that hold a hashed prefix (referenced or not)."""
        return len(self._by_hash)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def allocate(self) -> int | None:
        """A block for new KV, or ``None`` when every block is referenced."""
        if self._free:
            block = self._free.popleft()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            digest = self._hash_of[block]
            if digest is not None:
                del self._by_hash[digest]
                self._hash_of[block] = None
            self.evictions += 1
        else:
            return None
        self._refs[block] = 1
        return block

    def lookup(self, digest: BlockHash) -> int | None:
        """The cached block for ``digest``, referenced once more; ``None`` on a miss."""
        if not self.prefix_caching:
            return None
        block = self._by_hash.get(digest)
        if block is None:
            return None
        if self._refs[block] == 0:
            del self._evictable[block]
        self._refs[block] += 1
        return block

    def register(self, block: int, digest: BlockHash) -> None:
        """Mark ``block`` (now full) as holding the prefix ``digest``.

        When another block already holds that prefix, this one stays anonymous.
        """
        if not self.prefix_caching or self._hash_of[block] is not None:
            return
        if digest in self._by_hash:
            return
        self._by_hash[digest] = block
        self._hash_of[block] = digest

    def release(self, block: int) -> None:
        """Drop one reference; an unreferenced hashed block becomes evictable."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} released more often than referenced")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            if self._hash_of[block] is not None:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def release_all(self, blocks: Sequence[int]) -> None:
        # last blocks first: they are the least likely to be shared, so they
        # should be evicted before the prefix they extend
        for block in reversed(blocks):
            self.release(block)
