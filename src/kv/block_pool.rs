//! The pool of KV cache blocks: reference counts, the free queue and the prefix-cache map
//! (vLLM V1's `BlockPool`).
//!
//! Every block `0..num_blocks` is either in use (`ref_cnt > 0`, held by one or more
//! requests) or free (`ref_cnt == 0`, in the free queue). A full block may carry the hash of
//! the prefix it ends ([`BlockHash`]); while it does, the map `hash -> block` finds it, and
//! it keeps its hash when freed, so a later request with the same prefix can take it back
//! out of the free queue (a hit on a freed block). It loses the hash only when the free
//! queue hands it out again (eviction) or on [`BlockPool::reset_prefix_cache`].
//!
//! Allocation takes from the head of the free queue and freeing appends to the tail, so
//! the queue is least-recently-freed first; a request frees its blocks in reverse so its
//! prefix (the part most likely to be shared) is evicted last.
//!
//! No null block is reserved: every id `0..num_blocks` can be handed out. (vLLM keeps block
//! 0 as a placeholder for skipped sliding-window blocks; when such a scheme arrives, it can
//! take one block from the pool at start.) One block per hash: when two requests compute the
//! same block at the same time, the first to cache it wins and the other's copy stays an
//! ordinary uncached block.

use std::collections::HashMap;

use super::block_hash::BlockHash;
use super::free_queue::FreeKvBlockQueue;

pub struct BlockPool {
    ref_cnt: Vec<u32>,
    block_hash: Vec<Option<BlockHash>>,
    free_queue: FreeKvBlockQueue,
    cached: HashMap<BlockHash, u32>,
}

impl BlockPool {
    /// A pool of blocks `0..num_blocks`, all free and uncached, queued in id order.
    pub fn new(num_blocks: usize) -> Self {
        BlockPool {
            ref_cnt: vec![0; num_blocks],
            block_hash: vec![None; num_blocks],
            free_queue: FreeKvBlockQueue::new(num_blocks),
            cached: HashMap::new(),
        }
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    /// Number of free blocks (`ref_cnt == 0`), cached or not: all can be allocated.
    pub fn num_free_blocks(&self) -> usize {
        self.free_queue.len()
    }

    /// Fraction of blocks in use, in `[0, 1]` (vLLM's `get_usage`).
    pub fn usage(&self) -> f64 {
        let n = self.num_blocks();
        if n == 0 {
            0.0
        } else {
            1.0 - self.num_free_blocks() as f64 / n as f64
        }
    }

    /// Number of blocks in the prefix-cache map (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// The block's reference count.
    pub fn ref_cnt(&self, block: u32) -> u32 {
        self.ref_cnt[block as usize]
    }

    /// The block's hash, if it is cached.
    pub fn block_hash(&self, block: u32) -> Option<BlockHash> {
        self.block_hash[block as usize]
    }

    /// Takes `n` blocks from the head of the free queue, each with `ref_cnt = 1`; a block
    /// that was cached is evicted from the prefix cache first. None (changing nothing) if
    /// fewer than `n` are free.
    pub fn get_new_blocks(&mut self, n: usize) -> Option<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        self.get_new_blocks_into(n, &mut out).then_some(out)
    }

    fn get_new_blocks_into(&mut self, n: usize, out: &mut Vec<u32>) -> bool {
        let start = out.len();
        if !self.free_queue.popleft_n(n, out) {
            return false;
        }
        for &b in &out[start..] {
            self.evict(b);
            debug_assert_eq!(self.ref_cnt[b as usize], 0);
            self.ref_cnt[b as usize] = 1;
        }
        true
    }

    /// Drops the block's hash and its map entry, if any.
    fn evict(&mut self, block: u32) {
        if let Some(h) = self.block_hash[block as usize].take() {
            if self.cached.get(&h) == Some(&block) {
                self.cached.remove(&h);
            }
        }
    }

    /// Adds a reference to each block; a block that was free (a prefix-cache hit on a freed
    /// block) leaves the free queue.
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let rc = &mut self.ref_cnt[b as usize];
            if *rc == 0 {
                self.free_queue.remove(b);
            }
            *rc += 1;
        }
    }

    /// Drops one reference to each block, in the given order; a block that reaches zero goes
    /// to the tail of the free queue and keeps its hash (still cached until evicted). Pass a
    /// request's blocks in reverse so its prefix is evicted last. Panics on a double free.
    pub fn free_blocks(&mut self, blocks: impl IntoIterator<Item = u32>) {
        for b in blocks {
            let rc = &mut self.ref_cnt[b as usize];
            assert!(*rc > 0, "double free of KV block {b}");
            *rc -= 1;
            if *rc == 0 {
                self.free_queue.append(b);
            }
        }
    }

    /// Records `hashes[i]` as the hash of full block `blocks[i]` and puts it in the map.
    /// Blocks already cached are skipped; a block whose hash another block already holds
    /// stays uncached (one block per hash).
    pub fn cache_full_blocks(&mut self, blocks: &[u32], hashes: &[BlockHash]) {
        assert_eq!(blocks.len(), hashes.len(), "one hash per block");
        for (&b, &h) in blocks.iter().zip(hashes) {
            if let Some(old) = self.block_hash[b as usize] {
                debug_assert_eq!(old, h, "block {b} is cached under another hash");
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
                e.insert(b);
                self.block_hash[b as usize] = Some(h);
            }
        }
    }

    /// The cached block holding `hash`, in use or free.
    pub fn get_cached_block(&self, hash: &BlockHash) -> Option<u32> {
        self.cached.get(hash).copied()
    }

    /// Forgets every cached hash. As in vLLM this only happens when no block is in use
    /// (otherwise running requests would lose track of what is cached); returns whether it
    /// did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free_blocks() != self.num_blocks() {
            return false;
        }
        self.cached.clear();
        self.block_hash.iter_mut().for_each(|h| *h = None);
        true
    }

    /// The free queue from head (next to evict) to tail.
    pub fn free_queue_order(&self) -> Vec<u32> {
        self.free_queue.iter().collect()
    }

    /// Checks the pool's invariants: the free queue holds exactly the blocks with
    /// `ref_cnt == 0`, and the map and the blocks' hashes agree both ways.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut in_queue = vec![false; self.num_blocks()];
        for b in self.free_queue.iter() {
            assert!(!in_queue[b as usize], "block {b} twice in the free queue");
            in_queue[b as usize] = true;
        }
        for (b, &rc) in self.ref_cnt.iter().enumerate() {
            assert_eq!(
                rc == 0,
                in_queue[b],
                "block {b}: ref_cnt {rc} vs free queue"
            );
        }
        for (h, &b) in &self.cached {
            assert_eq!(
                self.block_hash[b as usize],
                Some(*h),
                "map entry for block {b}"
            );
        }
        for (b, h) in self.block_hash.iter().enumerate() {
            if let Some(h) = h {
                assert_eq!(self.cached.get(h), Some(&(b as u32)), "hash of block {b}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> BlockHash {
        BlockHash([i; 32])
    }

    #[test]
    fn allocates_from_head_and_refuses_when_short() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.get_new_blocks(3), Some(vec![0, 1, 2]));
        assert_eq!(p.num_free_blocks(), 1);
        assert_eq!(p.get_new_blocks(2), None);
        assert_eq!(p.num_free_blocks(), 1);
        assert_eq!(p.ref_cnt(0), 1);
        assert!((p.usage() - 0.75).abs() < 1e-12);
        p.check_invariants();
        assert_eq!(p.get_new_blocks(0), Some(vec![]));
    }

    #[test]
    fn reverse_free_keeps_prefix_longest() {
        let mut p = BlockPool::new(6);
        let a = p.get_new_blocks(3).unwrap(); // 0 1 2
        let b = p.get_new_blocks(3).unwrap(); // 3 4 5
        p.free_blocks(a.iter().rev().copied());
        p.free_blocks(b.iter().rev().copied());
        assert_eq!(p.free_queue_order(), vec![2, 1, 0, 5, 4, 3]);
        // LRU: the first request's tail goes first; its first block only after it.
        assert_eq!(p.get_new_blocks(2), Some(vec![2, 1]));
        p.check_invariants();
    }

    #[test]
    fn cached_block_survives_free_and_is_touched_back() {
        let mut p = BlockPool::new(4);
        let a = p.get_new_blocks(2).unwrap();
        p.cache_full_blocks(&a, &[h(1), h(2)]);
        assert_eq!(p.get_cached_block(&h(1)), Some(0));
        p.free_blocks(a.iter().rev().copied());
        assert_eq!(p.num_free_blocks(), 4);
        // Still cached while free.
        assert_eq!(p.get_cached_block(&h(1)), Some(0));
        assert_eq!(p.block_hash(0), Some(h(1)));
        // Hit: touched back out of the middle of the free queue.
        p.touch(&[0]);
        assert_eq!(p.ref_cnt(0), 1);
        assert_eq!(p.num_free_blocks(), 3);
        assert_eq!(p.free_queue_order(), vec![2, 3, 1]);
        // Touching an in-use block only adds a reference.
        p.touch(&[0]);
        assert_eq!(p.ref_cnt(0), 2);
        assert_eq!(p.num_free_blocks(), 3);
        p.check_invariants();
    }

    #[test]
    fn allocation_evicts_cached_hash() {
        let mut p = BlockPool::new(2);
        let a = p.get_new_blocks(2).unwrap();
        p.cache_full_blocks(&a, &[h(1), h(2)]);
        p.free_blocks(a.iter().rev().copied()); // queue: 1, 0
        assert_eq!(p.get_new_blocks(1), Some(vec![1]));
        assert_eq!(p.get_cached_block(&h(2)), None);
        assert_eq!(p.block_hash(1), None);
        assert_eq!(p.get_cached_block(&h(1)), Some(0));
        assert_eq!(p.num_cached_blocks(), 1);
        p.check_invariants();
    }

    #[test]
    fn cache_full_blocks_skips_cached_and_duplicates() {
        let mut p = BlockPool::new(3);
        let a = p.get_new_blocks(3).unwrap();
        p.cache_full_blocks(&a[..1], &[h(1)]);
        // Already cached: skipped (same hash).
        p.cache_full_blocks(&a[..2], &[h(1), h(2)]);
        assert_eq!(p.get_cached_block(&h(2)), Some(1));
        // Block 2 computed the same content as block 0: the first copy stays the cached one.
        p.cache_full_blocks(&a[2..], &[h(1)]);
        assert_eq!(p.get_cached_block(&h(1)), Some(0));
        assert_eq!(p.block_hash(2), None);
        p.check_invariants();
    }

    #[test]
    fn reset_prefix_cache_only_when_idle() {
        let mut p = BlockPool::new(2);
        let a = p.get_new_blocks(1).unwrap();
        p.cache_full_blocks(&a, &[h(7)]);
        assert!(!p.reset_prefix_cache());
        assert_eq!(p.get_cached_block(&h(7)), Some(0));
        p.free_blocks(a);
        assert!(p.reset_prefix_cache());
        assert_eq!(p.get_cached_block(&h(7)), None);
        assert_eq!(p.block_hash(0), None);
        p.check_invariants();
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut p = BlockPool::new(2);
        let a = p.get_new_blocks(1).unwrap();
        p.free_blocks(a.clone());
        p.free_blocks(a);
    }
}
