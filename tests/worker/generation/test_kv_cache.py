"""The KV block pool and prefix hashes, as plain objects."""

from __future__ import annotations

import pytest

from worker.generation.kv_cache import BlockPool, block_hash, prefix_block_hashes


def test_block_hash_is_chained_over_the_whole_prefix() -> None:
    a = block_hash(None, [1, 2, 3, 4])
    assert a == block_hash(None, [1, 2, 3, 4])
    assert a != block_hash(None, [1, 2, 3, 5])
    # the same block after different parents is a different prefix
    assert block_hash(a, [5, 6, 7, 8]) != block_hash(block_hash(None, [9, 9, 9, 9]), [5, 6, 7, 8])


def test_prefix_hashes_cover_full_blocks_only_and_extend_incrementally() -> None:
    tokens = list(range(11))
    hashes = prefix_block_hashes(tokens, 4)
    assert len(hashes) == 2
    assert hashes[1] == block_hash(hashes[0], [4, 5, 6, 7])
    longer = [*tokens, 11]
    assert prefix_block_hashes(longer, 4, hashes) == prefix_block_hashes(longer, 4)
    assert len(prefix_block_hashes(longer, 4, hashes)) == 3


def test_allocate_until_exhausted_then_release() -> None:
    pool = BlockPool(3)
    blocks = [pool.allocate() for _ in range(3)]
    assert sorted(b for b in blocks if b is not None) == [0, 1, 2]
    assert pool.allocate() is None
    assert pool.num_free == 0 and pool.num_used == 3
    pool.release(1)
    assert pool.num_free == 1
    assert pool.allocate() == 1
    with pytest.raises(ValueError, match="released more often"):
        pool.release(2)
        pool.release(2)


def test_cached_block_is_shared_and_survives_release_until_evicted() -> None:
    pool = BlockPool(2)
    digest = block_hash(None, [1, 2])
    block = pool.allocate()
    assert block is not None
    pool.register(block, digest)
    assert pool.lookup(digest) == block
    assert pool.refs(block) == 2
    pool.release(block)
    pool.release(block)
    # unreferenced but still cached: counted free, found again
    assert pool.num_free == 2 and pool.num_cached == 1
    assert pool.lookup(digest) == block
    pool.release(block)
    # the plain free block goes first; then the cached one is evicted
    other = pool.allocate()
    assert other is not None and other != block
    assert pool.allocate() == block
    assert pool.evictions == 1
    assert pool.lookup(digest) is None


def test_eviction_is_least_recently_used_first() -> None:
    pool = BlockPool(3)
    digests = [block_hash(None, [i]) for i in range(3)]
    blocks = []
    for d in digests:
        b = pool.allocate()
        assert b is not None
        pool.register(b, d)
        blocks.append(b)
    for b in (blocks[1], blocks[0], blocks[2]):  # release order = recency
        pool.release(b)
    # touch block 1 again: it becomes the most recently used
    assert pool.lookup(digests[1]) == blocks[1]
    pool.release(blocks[1])
    evicted = [pool.allocate() for _ in range(3)]
    assert evicted == [blocks[0], blocks[2], blocks[1]]


def test_release_all_evicts_the_tail_of_a_prefix_before_its_head() -> None:
    pool = BlockPool(2)
    h0 = block_hash(None, [1])
    h1 = block_hash(h0, [2])
    b0, b1 = pool.allocate(), pool.allocate()
    assert b0 is not None and b1 is not None
    pool.register(b0, h0)
    pool.register(b1, h1)
    pool.release_all([b0, b1])
    assert pool.allocate() == b1
    assert pool.lookup(h0) == b0


def test_duplicate_prefix_stays_anonymous_and_caching_can_be_off() -> None:
    pool = BlockPool(2)
    d = block_hash(None, [7])
    a, b = pool.allocate(), pool.allocate()
    assert a is not None and b is not None
    pool.register(a, d)
    pool.register(b, d)
    pool.release(b)
    assert pool.num_cached == 1 and pool.lookup(d) == a

    off = BlockPool(1, prefix_caching=False)
    c = off.allocate()
    assert c is not None
    off.register(c, d)
    off.release(c)
    assert off.lookup(d) is None and off.num_cached == 0
