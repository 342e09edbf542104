//! Blocks of the KV cache with reference counts and a free queue.

use std::collections::VecDeque;

pub struct BlockPool {
    ref_cnt: Vec<u32>,
    free: VecDeque<u32>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        BlockPool {
            ref_cnt: vec![0; num_blocks],
            free: (0..num_blocks as u32).collect(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_cnt.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Appends `n` blocks from the head of the free queue to `out`; false (taking nothing)
    /// if fewer are free.
    pub fn allocate(&mut self, n: usize, out: &mut Vec<u32>) -> bool {
        if n > self.free.len() {
            return false;
        }
        for b in self.free.drain(..n) {
            self.ref_cnt[b as usize] = 1;
            out.push(b);
        }
        true
    }

    /// Adds a reference to a block already in use (sharing).
    pub fn share(&mut self, block: u32) {
        debug_assert!(self.ref_cnt[block as usize] > 0);
        self.ref_cnt[block as usize] += 1;
    }

    /// Drops one reference to each block, in order; blocks that reach zero return to the
    /// free queue (a request's blocks are passed in reverse so its prefix is evicted last).
    pub fn free(&mut self, blocks: impl IntoIterator<Item = u32>) {
        for b in blocks {
            let rc = &mut self.ref_cnt[b as usize];
            debug_assert!(*rc > 0, "double free of block {b}");
            *rc -= 1;
            if *rc == 0 {
                self.free.push_back(b);
            }
        }
    }
}
