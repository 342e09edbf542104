//! Per-request KV block bookkeeping with automatic prefix caching (vLLM V1's
//! `KVCacheManager` for one full-attention KV cache group).
//!
//! The scheduler drives it per step:
//! - a waiting request: [`KvCacheManager::get_computed_blocks`] finds the cached prefix,
//!   then [`KvCacheManager::allocate_slots`] takes those hit blocks and allocates the rest;
//! - a running request: `allocate_slots` with no hit blocks to grow it;
//! - a finished or preempted request: [`KvCacheManager::free`].
//!
//! Block hashes come from the caller (the request keeps them, computed incrementally with
//! [`super::block_hash::compute_block_hashes`] over its known tokens), so a hash exists only
//! for a full block whose token ids are final.
//!
//! Blocks are cached when they are allocated for a step that will fill them, before the
//! forward pass writes them, as in vLLM. A request admitted in the same step may hit such a
//! block; this is sound as long as the runner writes the KV of every token of the batch
//! for a layer before that layer's attention reads the cache.

use std::collections::HashMap;

use super::block_hash::{BlockHash, HashAlgo};
use super::block_pool::BlockPool;

/// Prefix-cache counters, in tokens, since the manager was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens looked up: the full token count of every request passed to
    /// `get_computed_blocks`.
    pub queries: u64,
    /// Of those, tokens found in the cache.
    pub hits: u64,
}

/// Outcome of [`KvCacheManager::copy_on_write_tail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailCow {
    /// The block the next token goes into is not shared (or does not exist yet): write away.
    Exclusive,
    /// The shared partial block `src` was replaced in this request by the new block `dst`;
    /// the caller copies `src`'s contents to `dst` (backend `copy_blocks`) before writing.
    Copied { src: u32, dst: u32 },
    /// The tail is shared and no block is free to copy it into; nothing changed.
    NoFreeBlock,
}

#[derive(Debug, Default)]
struct RequestBlocks {
    /// The request's blocks, in token order.
    blocks: Vec<u32>,
    /// How many of the leading blocks are full and have been offered to the prefix cache.
    num_cached: usize,
}

pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_caching: bool,
    algo: HashAlgo,
    requests: HashMap<u64, RequestBlocks>,
    stats: PrefixCacheStats,
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens. `algo` is the hash the
    /// caller uses for block hashes (recorded for it; the manager only compares hashes).
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool, algo: HashAlgo) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        KvCacheManager {
            pool: BlockPool::new(num_blocks),
            block_size,
            enable_caching,
            algo,
            requests: HashMap::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn enable_caching(&self) -> bool {
        self.enable_caching
    }

    pub fn hash_algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Fraction of blocks in use.
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn metrics(&self) -> PrefixCacheStats {
        self.stats
    }

    /// The underlying pool (read-only).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The request's blocks in token order (empty for an unknown request).
    pub fn block_ids(&self, request_id: u64) -> &[u32] {
        self.requests
            .get(&request_id)
            .map_or(&[][..], |r| &r.blocks[..])
    }

    /// How many of the request's leading full blocks have been offered to the prefix cache.
    pub fn num_cached_blocks(&self, request_id: u64) -> usize {
        self.requests.get(&request_id).map_or(0, |r| r.num_cached)
    }

    /// Forgets all cached prefixes; only when no block is in use (returns whether it did).
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_prefix_cache()
    }

    /// The longest cached prefix of a request that holds no blocks yet: the hit blocks and
    /// the number of tokens they hold. `block_hashes[i]` is the hash of full block `i` of
    /// `all_token_ids`. At most `all_token_ids.len() - 1` tokens count as computed, so the
    /// last token is always recomputed for its logits (a prompt of exactly k full blocks
    /// gets at most k - 1 blocks). Adds the query and hit token counts to the metrics.
    /// With caching disabled: nothing, and no metrics.
    ///
    /// The blocks are not taken yet: pass them to [`KvCacheManager::allocate_slots`].
    pub fn get_computed_blocks(
        &mut self,
        request_id: u64,
        all_token_ids: &[u32],
        block_hashes: &[BlockHash],
    ) -> (Vec<u32>, usize) {
        if !self.enable_caching {
            return (Vec::new(), 0);
        }
        debug_assert!(
            self.block_ids(request_id).is_empty(),
            "request {request_id} already holds blocks"
        );
        debug_assert!(block_hashes.len() <= all_token_ids.len() / self.block_size);
        let num_tokens = all_token_ids.len();
        let max_hit_blocks = num_tokens.saturating_sub(1) / self.block_size;
        let blocks: Vec<u32> = block_hashes
            .iter()
            .take(max_hit_blocks)
            .map_while(|h| self.pool.get_cached_block(h))
            .collect();
        let num_computed = blocks.len() * self.block_size;
        self.stats.queries += num_tokens as u64;
        self.stats.hits += num_computed as u64;
        (blocks, num_computed)
    }

    /// Makes the request's blocks cover `num_tokens_after` tokens (its computed tokens,
    /// including the `new_computed_blocks` prefix hits, plus the tokens scheduled now).
    ///
    /// Takes the hit blocks first (one more reference each; a free one leaves the free
    /// queue), then allocates what is still missing and returns the new block ids. If the
    /// pool cannot supply them it returns None and changes nothing; free hit blocks count
    /// as consumed in that check, since taking them removes them from the free pool. Then,
    /// with caching on, caches the request's full blocks not cached yet, up to
    /// `min(num_tokens_after / block_size, block_hashes.len())`: the caller hashes only
    /// full blocks of known tokens, so a block is cached only when its content is final.
    pub fn allocate_slots(
        &mut self,
        request_id: u64,
        num_tokens_after: usize,
        new_computed_blocks: &[u32],
        block_hashes: &[BlockHash],
    ) -> Option<Vec<u32>> {
        debug_assert!(self.enable_caching || new_computed_blocks.is_empty());
        let have = self.block_ids(request_id).len() + new_computed_blocks.len();
        let num_new = num_tokens_after
            .div_ceil(self.block_size)
            .saturating_sub(have);
        let num_evictable_hits = new_computed_blocks
            .iter()
            .filter(|&&b| self.pool.ref_cnt(b) == 0)
            .count();
        if num_new + num_evictable_hits > self.pool.num_free_blocks() {
            return None;
        }

        let Self {
            pool,
            requests,
            block_size,
            enable_caching,
            ..
        } = self;
        let req = requests.entry(request_id).or_default();
        if !new_computed_blocks.is_empty() {
            debug_assert_eq!(
                req.num_cached,
                req.blocks.len(),
                "prefix hits after uncached blocks"
            );
            pool.touch(new_computed_blocks);
            req.blocks.extend_from_slice(new_computed_blocks);
            req.num_cached = req.blocks.len();
        }
        let new_blocks = pool
            .get_new_blocks(num_new)
            .expect("free block count checked above");
        req.blocks.extend_from_slice(&new_blocks);

        if *enable_caching {
            let num_full = (num_tokens_after / *block_size)
                .min(block_hashes.len())
                .min(req.blocks.len());
            if num_full > req.num_cached {
                pool.cache_full_blocks(
                    &req.blocks[req.num_cached..num_full],
                    &block_hashes[req.num_cached..num_full],
                );
                req.num_cached = num_full;
            }
        }
        Some(new_blocks)
    }

    /// Frees the request's blocks in reverse order (its tail is evicted first, its prefix
    /// last) and forgets the request. Unknown ids are ignored.
    pub fn free(&mut self, request_id: u64) {
        if let Some(r) = self.requests.remove(&request_id) {
            self.pool.free_blocks(r.blocks.into_iter().rev());
        }
    }

    /// Gives `child_id` (which must hold no blocks) the parent's blocks that cover its first
    /// `num_tokens` tokens, one more reference each (for `n > 1` and beam search). Blocks
    /// the parent holds beyond those (allocated ahead of computation) are not shared.
    /// Returns false, changing nothing, if the parent is unknown or the child exists.
    ///
    /// The parent and child now share the partial last block, if `num_tokens` is not a
    /// multiple of the block size: before either writes into it, call
    /// [`KvCacheManager::copy_on_write_tail`] for that request.
    pub fn fork(&mut self, parent_id: u64, child_id: u64, num_tokens: usize) -> bool {
        if parent_id == child_id || self.requests.contains_key(&child_id) {
            return false;
        }
        let Some(parent) = self.requests.get(&parent_id) else {
            return false;
        };
        let n = num_tokens
            .div_ceil(self.block_size)
            .min(parent.blocks.len());
        let blocks = parent.blocks[..n].to_vec();
        let num_cached = parent.num_cached.min(n);
        self.pool.touch(&blocks);
        self.requests
            .insert(child_id, RequestBlocks { blocks, num_cached });
        true
    }

    /// Whether the block that token `num_tokens` (0-based) would be written into is a
    /// partial block shared with another request.
    pub fn tail_is_shared(&self, request_id: u64, num_tokens: usize) -> bool {
        if num_tokens.is_multiple_of(self.block_size) {
            return false;
        }
        self.block_ids(request_id)
            .get(num_tokens / self.block_size)
            .is_some_and(|&b| self.pool.ref_cnt(b) > 1)
    }

    /// Copy-on-write for a request whose first `num_tokens` tokens are in its blocks: if the
    /// partial block the next token goes into is shared, gives the request a fresh block in
    /// its place and returns the pair to copy. Full blocks are never written again, so only
    /// this block needs it.
    pub fn copy_on_write_tail(&mut self, request_id: u64, num_tokens: usize) -> TailCow {
        if !self.tail_is_shared(request_id, num_tokens) {
            return TailCow::Exclusive;
        }
        let Some(new) = self.pool.get_new_blocks(1) else {
            return TailCow::NoFreeBlock;
        };
        let dst = new[0];
        let req = self
            .requests
            .get_mut(&request_id)
            .expect("tail_is_shared found the request");
        let idx = num_tokens / self.block_size;
        let src = std::mem::replace(&mut req.blocks[idx], dst);
        // A partial block is never cached, so num_cached is unaffected.
        debug_assert!(req.num_cached <= idx);
        self.pool.free_blocks([src]);
        TailCow::Copied { src, dst }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::block_hash::{compute_block_hashes, ExtraKeys};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const BS: usize = 4;

    fn hashes(algo: HashAlgo, tokens: &[u32]) -> Vec<BlockHash> {
        let mut v = Vec::new();
        compute_block_hashes(algo, tokens, BS, &ExtraKeys::default(), &mut v);
        v
    }

    fn mgr(n: usize) -> KvCacheManager {
        KvCacheManager::new(n, BS, true, HashAlgo::Sha256)
    }

    /// Admit a request: look up hits, allocate the whole prompt; returns num_computed.
    fn admit(m: &mut KvCacheManager, id: u64, toks: &[u32]) -> Option<usize> {
        let hs = hashes(m.hash_algo(), toks);
        let (hits, computed) = m.get_computed_blocks(id, toks, &hs);
        m.allocate_slots(id, toks.len(), &hits, &hs)?;
        Some(computed)
    }

    type Snapshot = (
        Vec<u32>,
        Vec<Option<BlockHash>>,
        Vec<u32>,
        Vec<(u64, Vec<u32>, usize)>,
    );

    fn snapshot(m: &KvCacheManager) -> Snapshot {
        let n = m.num_blocks() as u32;
        let mut reqs: Vec<_> = m
            .requests
            .iter()
            .map(|(&id, r)| (id, r.blocks.clone(), r.num_cached))
            .collect();
        reqs.sort();
        (
            (0..n).map(|b| m.pool.ref_cnt(b)).collect(),
            (0..n).map(|b| m.pool.block_hash(b)).collect(),
            m.pool.free_queue_order(),
            reqs,
        )
    }

    #[test]
    fn exact_block_prompt_recomputes_last_block() {
        let mut m = mgr(16);
        let toks: Vec<u32> = (0..12).collect(); // exactly 3 blocks
        assert_eq!(admit(&mut m, 1, &toks), Some(0));
        let first = m.block_ids(1).to_vec();
        m.free(1);
        assert_eq!(admit(&mut m, 2, &toks), Some(2 * BS));
        // One more token: all three full blocks hit.
        let mut longer = toks.clone();
        longer.push(99);
        assert_eq!(admit(&mut m, 3, &longer), Some(3 * BS));
        // The hit blocks are shared, not copied. Request 2 recomputed block 2 into a new
        // block, which stayed uncached (the freed original still held that hash), so
        // request 3 hits the original.
        assert_eq!(m.block_ids(2)[..2], first[..2]);
        assert_eq!(m.block_ids(3)[..3], first[..]);
        assert_eq!(m.pool().block_hash(m.block_ids(2)[2]), None);
        assert_eq!(m.pool().ref_cnt(first[0]), 2);
    }

    #[test]
    fn hits_after_free_touch_blocks_out_of_free_queue() {
        let mut m = mgr(8);
        let toks: Vec<u32> = (100..110).collect(); // 2 full blocks + 2
        admit(&mut m, 1, &toks).unwrap();
        let a = m.block_ids(1).to_vec();
        assert_eq!(a.len(), 3);
        assert_eq!(m.num_cached_blocks(1), 2);
        m.free(1);
        assert_eq!(m.num_free_blocks(), 8);
        // Reverse order: the tail block is first in line for eviction.
        let order = m.pool().free_queue_order();
        assert_eq!(&order[order.len() - 3..], &[a[2], a[1], a[0]]);

        let hs = hashes(m.hash_algo(), &toks);
        let (hits, computed) = m.get_computed_blocks(2, &toks, &hs);
        assert_eq!(hits, a[..2].to_vec());
        assert_eq!(computed, 8);
        let new = m.allocate_slots(2, toks.len(), &hits, &hs).unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(m.num_free_blocks(), 5);
        for &b in &hits {
            assert_eq!(m.pool().ref_cnt(b), 1);
            assert!(!m.pool().free_queue_order().contains(&b));
        }
        m.pool().check_invariants();
    }

    #[test]
    fn lru_eviction_keeps_prefix_longest() {
        let mut m = mgr(4);
        let toks: Vec<u32> = (0..16).collect(); // 4 full blocks
        m.allocate_slots(1, 16, &[], &hashes(HashAlgo::Sha256, &toks))
            .unwrap();
        let a = m.block_ids(1).to_vec();
        m.free(1);
        // A stranger needs 2 blocks: it evicts the prefix's last two blocks.
        let other: Vec<u32> = (500..508).collect();
        admit(&mut m, 2, &other).unwrap();
        assert_eq!(m.block_ids(2), &[a[3], a[2]]);
        // The first two blocks still hit.
        let (hits, computed) = m.get_computed_blocks(3, &toks, &hashes(HashAlgo::Sha256, &toks));
        assert_eq!(hits, a[..2].to_vec());
        assert_eq!(computed, 8);
    }

    #[test]
    fn allocate_none_leaves_state_unchanged_counting_free_hits() {
        let mut m = mgr(4);
        let base: Vec<u32> = (0..8).collect();
        let hs = hashes(HashAlgo::Sha256, &base);
        m.allocate_slots(1, 8, &[], &hs).unwrap();
        m.free(1); // 4 free, 2 of them cached
        let mut toks = base.clone();
        toks.extend(50..59); // 17 tokens: 5 blocks
        let hs = hashes(HashAlgo::Sha256, &toks);
        let (hits, computed) = m.get_computed_blocks(2, &toks, &hs);
        assert_eq!((hits.len(), computed), (2, 8));
        let before = snapshot(&m);
        // 3 new blocks + 2 free hit blocks > 4 free blocks.
        assert_eq!(m.allocate_slots(2, 17, &hits, &hs), None);
        assert_eq!(snapshot(&m), before);
        assert!(m.block_ids(2).is_empty());
        // 16 tokens fit exactly: 2 hits + 2 new.
        let new = m.allocate_slots(2, 16, &hits, &hs).unwrap();
        assert_eq!(new.len(), 2);
        assert_eq!(m.num_free_blocks(), 0);
        m.pool().check_invariants();
        // A running request that cannot grow changes nothing either.
        let before = snapshot(&m);
        assert_eq!(m.allocate_slots(2, 17, &[], &hs), None);
        assert_eq!(snapshot(&m), before);
        m.free(2);
        assert_eq!(m.num_free_blocks(), 4);
    }

    #[test]
    fn metrics_count_tokens() {
        let mut m = mgr(16);
        let toks: Vec<u32> = (0..10).collect();
        admit(&mut m, 1, &toks).unwrap();
        assert_eq!(
            m.metrics(),
            PrefixCacheStats {
                queries: 10,
                hits: 0
            }
        );
        admit(&mut m, 2, &toks).unwrap();
        assert_eq!(
            m.metrics(),
            PrefixCacheStats {
                queries: 20,
                hits: 8
            }
        );
        let mut other = toks[..5].to_vec();
        other.extend([7, 7, 7, 7, 7]);
        admit(&mut m, 3, &other).unwrap();
        assert_eq!(
            m.metrics(),
            PrefixCacheStats {
                queries: 30,
                hits: 12
            }
        );
    }

    #[test]
    fn caching_disabled_finds_nothing() {
        let mut m = KvCacheManager::new(8, BS, false, HashAlgo::Xxh3_128);
        let toks: Vec<u32> = (0..10).collect();
        let hs = hashes(HashAlgo::Xxh3_128, &toks);
        m.allocate_slots(1, 10, &[], &hs).unwrap();
        assert_eq!(m.num_cached_blocks(1), 0);
        assert_eq!(m.pool().num_cached_blocks(), 0);
        m.free(1);
        assert_eq!(m.get_computed_blocks(2, &toks, &hs), (vec![], 0));
        assert_eq!(m.metrics(), PrefixCacheStats::default());
    }

    #[test]
    fn salt_isolates_prefix() {
        for algo in [HashAlgo::Sha256, HashAlgo::Xxh3_128] {
            let mut m = KvCacheManager::new(16, BS, true, algo);
            let toks: Vec<u32> = (0..9).collect();
            let keyed = |salt: Option<&str>| {
                let mut v = Vec::new();
                let k = ExtraKeys {
                    cache_salt: salt.map(str::to_string),
                    ..Default::default()
                };
                compute_block_hashes(algo, &toks, BS, &k, &mut v);
                v
            };
            let a = keyed(Some("a"));
            m.allocate_slots(1, 9, &[], &a).unwrap();
            assert_eq!(m.get_computed_blocks(2, &toks, &keyed(Some("b"))).1, 0);
            assert_eq!(m.get_computed_blocks(2, &toks, &keyed(None)).1, 0);
            assert_eq!(m.get_computed_blocks(2, &toks, &a).1, 8);
        }
    }

    #[test]
    fn incremental_growth_caches_full_blocks_only() {
        let mut m = mgr(8);
        let mut toks: Vec<u32> = (0..6).collect();
        let mut hs = Vec::new();
        compute_block_hashes(HashAlgo::Sha256, &toks, BS, &ExtraKeys::default(), &mut hs);
        // Chunked prefill: 3 tokens, then the rest.
        assert_eq!(m.allocate_slots(1, 3, &[], &hs).unwrap().len(), 1);
        assert_eq!(m.num_cached_blocks(1), 0);
        assert_eq!(m.allocate_slots(1, 6, &[], &hs).unwrap().len(), 1);
        assert_eq!(m.num_cached_blocks(1), 1);
        // Decode: tokens 6, 7 fill block 1.
        for t in [6, 7] {
            toks.push(t);
            compute_block_hashes(HashAlgo::Sha256, &toks, BS, &ExtraKeys::default(), &mut hs);
            let n = toks.len();
            assert!(m.allocate_slots(1, n, &[], &hs).unwrap().is_empty());
        }
        assert_eq!(m.num_cached_blocks(1), 2);
        assert_eq!(m.pool().get_cached_block(&hs[1]), Some(m.block_ids(1)[1]));
        m.pool().check_invariants();
    }

    #[test]
    fn fork_shares_and_copy_on_write() {
        let mut m = mgr(8);
        let toks: Vec<u32> = (0..6).collect();
        admit(&mut m, 1, &toks).unwrap();
        assert!(m.fork(1, 2, 6));
        assert!(!m.fork(1, 2, 6));
        assert!(!m.fork(9, 3, 6));
        let p = m.block_ids(1).to_vec();
        assert_eq!(m.block_ids(2), &p[..]);
        assert_eq!(m.pool().ref_cnt(p[0]), 2);
        assert!(m.tail_is_shared(1, 6));
        assert!(m.tail_is_shared(2, 6));
        match m.copy_on_write_tail(2, 6) {
            TailCow::Copied { src, dst } => {
                assert_eq!(src, p[1]);
                assert_eq!(m.block_ids(2), &[p[0], dst]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.copy_on_write_tail(1, 6), TailCow::Exclusive);
        assert_eq!(m.pool().ref_cnt(p[1]), 1);
        assert_eq!(m.pool().ref_cnt(p[0]), 2);
        // Full tail: nothing to copy.
        assert!(!m.tail_is_shared(2, 4));
        m.free(1);
        m.free(2);
        assert_eq!(m.num_free_blocks(), 8);
    }

    /// The model of a request held by the randomized test.
    struct Req {
        tokens: Vec<u32>,
        hashes: Vec<BlockHash>,
        computed: usize,
    }

    fn check_all(m: &KvCacheManager, reqs: &HashMap<u64, Req>) {
        m.pool().check_invariants();
        let mut held = vec![0u32; m.num_blocks()];
        for (&id, r) in reqs {
            let blocks = m.block_ids(id);
            assert!(
                blocks.len() * BS >= r.computed,
                "request {id} under-allocated"
            );
            for &b in blocks {
                held[b as usize] += 1;
            }
            // Cached blocks carry the hash of this request's prefix (or none: a duplicate).
            let nc = m.num_cached_blocks(id);
            assert!(nc <= r.hashes.len() && nc * BS <= r.computed);
            for (i, &b) in blocks.iter().enumerate().take(nc) {
                if let Some(h) = m.pool().block_hash(b) {
                    assert_eq!(h, r.hashes[i], "request {id} block {i}");
                }
            }
        }
        for (b, &n) in held.iter().enumerate() {
            assert_eq!(m.pool().ref_cnt(b as u32), n, "ref_cnt of block {b}");
        }
        assert_eq!(m.requests.len(), reqs.len());
        let free = held.iter().filter(|&&n| n == 0).count();
        assert_eq!(m.num_free_blocks(), free);
    }

    #[test]
    fn randomized_invariants() {
        for (seed, algo) in [(1u64, HashAlgo::Xxh3_128), (2, HashAlgo::Sha256)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut m = KvCacheManager::new(48, BS, true, algo);
            let prefixes: Vec<Vec<u32>> = (0..4)
                .map(|_| (0..24).map(|_| rng.random_range(0..50)).collect())
                .collect();
            let mut reqs: HashMap<u64, Req> = HashMap::new();
            let mut next_id = 0u64;
            let mut expect = PrefixCacheStats::default();
            let (mut total_hits, mut preempted) = (0usize, 0usize);

            for _ in 0..3000 {
                let op = rng.random_range(0..10);
                if op < 3 || reqs.is_empty() {
                    // Admit a request with a random shared prefix.
                    let p = &prefixes[rng.random_range(0..prefixes.len())];
                    let mut tokens = p[..rng.random_range(0..=p.len())].to_vec();
                    for _ in 0..rng.random_range(1..10) {
                        tokens.push(rng.random_range(0..3));
                    }
                    let hs = hashes(algo, &tokens);
                    let id = next_id;
                    next_id += 1;
                    let (hits, computed) = m.get_computed_blocks(id, &tokens, &hs);
                    expect.queries += tokens.len() as u64;
                    expect.hits += computed as u64;
                    total_hits += hits.len();
                    assert!(computed < tokens.len());
                    assert_eq!(computed, hits.len() * BS);
                    for (i, &b) in hits.iter().enumerate() {
                        assert_eq!(m.pool().block_hash(b), Some(hs[i]));
                    }
                    let target = (computed + rng.random_range(1..12)).min(tokens.len());
                    let before = snapshot(&m);
                    match m.allocate_slots(id, target, &hits, &hs) {
                        Some(_) => {
                            reqs.insert(
                                id,
                                Req {
                                    tokens,
                                    hashes: hs,
                                    computed: target,
                                },
                            );
                        }
                        None => assert_eq!(snapshot(&m), before),
                    }
                } else if op < 8 {
                    // One step of a running request: prefill chunk or decode.
                    let ids: Vec<u64> = reqs.keys().copied().collect();
                    let id = ids[rng.random_range(0..ids.len())];
                    let r = reqs.get_mut(&id).unwrap();
                    if r.computed == r.tokens.len() {
                        r.tokens.push(rng.random_range(0..3));
                        compute_block_hashes(
                            algo,
                            &r.tokens,
                            BS,
                            &ExtraKeys::default(),
                            &mut r.hashes,
                        );
                    }
                    let target = (r.computed + rng.random_range(1..8)).min(r.tokens.len());
                    let cow = m.copy_on_write_tail(id, r.computed);
                    let before = snapshot(&m);
                    let ok = cow != TailCow::NoFreeBlock
                        && match m.allocate_slots(id, target, &[], &r.hashes) {
                            Some(_) => true,
                            None => {
                                assert_eq!(snapshot(&m), before);
                                false
                            }
                        };
                    if ok {
                        r.computed = target;
                    } else {
                        // Preempt.
                        m.free(id);
                        reqs.remove(&id);
                        preempted += 1;
                    }
                } else if op < 9 {
                    let ids: Vec<u64> = reqs.keys().copied().collect();
                    let id = ids[rng.random_range(0..ids.len())];
                    m.free(id);
                    reqs.remove(&id);
                } else {
                    // Fork (n > 1).
                    let ids: Vec<u64> = reqs.keys().copied().collect();
                    let parent = ids[rng.random_range(0..ids.len())];
                    let child = next_id;
                    next_id += 1;
                    let p = &reqs[&parent];
                    assert!(m.fork(parent, child, p.computed));
                    let c = Req {
                        tokens: p.tokens.clone(),
                        hashes: p.hashes.clone(),
                        computed: p.computed,
                    };
                    reqs.insert(child, c);
                }
                check_all(&m, &reqs);
                assert_eq!(m.metrics(), expect);
            }
            assert!(
                total_hits > 100,
                "the test should exercise hits: {total_hits}"
            );
            assert!(
                preempted > 10,
                "the test should exercise a full pool: {preempted}"
            );
            let ids: Vec<u64> = reqs.keys().copied().collect();
            for id in ids {
                m.free(id);
                reqs.remove(&id);
            }
            check_all(&m, &reqs);
            assert_eq!(m.num_free_blocks(), m.num_blocks());
            assert_eq!(m.usage(), 0.0);
            assert!(m.reset_prefix_cache());
            assert_eq!(m.pool().num_cached_blocks(), 0);
        }
    }
}
