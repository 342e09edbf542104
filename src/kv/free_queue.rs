//! The free block queue: an intrusive doubly linked list over block ids, in eviction order.
//!
//! vLLM's `FreeKVCacheBlockQueue`: the head is the next block to hand out (and, if it still
//! carries a hash, the next cached block to be evicted); freed blocks go to the tail. A
//! cached block that is hit again while free is unlinked from the middle in O(1). The links
//! live in two index arrays (`prev`, `next`) owned by the queue, so no allocation happens
//! after construction.

/// "No block": the end of the list.
const NIL: u32 = u32::MAX;

/// Doubly linked list of free block ids with O(1) `popleft`, `append` and `remove`.
#[derive(Debug, Clone)]
pub struct FreeKvBlockQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    in_queue: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeKvBlockQueue {
    /// A queue over blocks `0..num_blocks`, all free, in id order (block 0 at the head).
    pub fn new(num_blocks: usize) -> Self {
        assert!(
            num_blocks < NIL as usize,
            "too many blocks for u32 block ids: {num_blocks}"
        );
        let n = num_blocks as u32;
        let prev = (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect();
        let next = (0..n)
            .map(|i| if i + 1 == n { NIL } else { i + 1 })
            .collect();
        FreeKvBlockQueue {
            prev,
            next,
            in_queue: vec![true; num_blocks],
            head: if n == 0 { NIL } else { 0 },
            tail: if n == 0 { NIL } else { n - 1 },
            len: num_blocks,
        }
    }

    /// Number of blocks in the queue.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of block ids the queue can hold (`0..capacity`).
    pub fn capacity(&self) -> usize {
        self.in_queue.len()
    }

    /// Whether `block` is in the queue.
    pub fn contains(&self, block: u32) -> bool {
        self.in_queue[block as usize]
    }

    /// The block `popleft` would return, without removing it.
    pub fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// Removes and returns the head block (the next to evict), or None when empty.
    pub fn popleft(&mut self) -> Option<u32> {
        let b = self.front()?;
        self.remove(b);
        Some(b)
    }

    /// Removes the first `n` blocks into `out`, in order; false (taking nothing) if fewer
    /// than `n` are free.
    pub fn popleft_n(&mut self, n: usize, out: &mut Vec<u32>) -> bool {
        if n > self.len {
            return false;
        }
        out.reserve(n);
        for _ in 0..n {
            let b = self.popleft().expect("length checked above");
            out.push(b);
        }
        true
    }

    /// Unlinks `block` from wherever it is in the queue. Panics if it is not there.
    pub fn remove(&mut self, block: u32) {
        let i = block as usize;
        assert!(self.in_queue[i], "block {block} is not in the free queue");
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.in_queue[i] = false;
        self.len -= 1;
    }

    /// Puts `block` at the tail (evicted last). Panics if it is already in the queue.
    pub fn append(&mut self, block: u32) {
        let i = block as usize;
        assert!(
            !self.in_queue[i],
            "block {block} is already in the free queue"
        );
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.in_queue[i] = true;
        self.len += 1;
    }

    /// The blocks from head to tail (eviction order).
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let b = cur;
            cur = self.next[b as usize];
            Some(b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(q: &FreeKvBlockQueue) -> Vec<u32> {
        q.iter().collect()
    }

    /// The backward links agree with the forward ones.
    fn check_links(q: &FreeKvBlockQueue) {
        let fwd = items(q);
        assert_eq!(fwd.len(), q.len());
        let mut back = Vec::new();
        let mut cur = q.tail;
        while cur != NIL {
            back.push(cur);
            cur = q.prev[cur as usize];
        }
        back.reverse();
        assert_eq!(fwd, back);
        for b in 0..q.capacity() as u32 {
            assert_eq!(q.contains(b), fwd.contains(&b));
        }
    }

    #[test]
    fn new_is_in_id_order() {
        let q = FreeKvBlockQueue::new(5);
        assert_eq!(items(&q), vec![0, 1, 2, 3, 4]);
        assert_eq!(q.front(), Some(0));
        check_links(&q);
        let e = FreeKvBlockQueue::new(0);
        assert!(e.is_empty());
        assert_eq!(e.front(), None);
    }

    #[test]
    fn popleft_and_append() {
        let mut q = FreeKvBlockQueue::new(3);
        assert_eq!(q.popleft(), Some(0));
        assert_eq!(q.popleft(), Some(1));
        q.append(0);
        assert_eq!(items(&q), vec![2, 0]);
        assert_eq!(q.popleft(), Some(2));
        assert_eq!(q.popleft(), Some(0));
        assert_eq!(q.popleft(), None);
        assert!(q.is_empty());
        check_links(&q);
        q.append(1);
        q.append(2);
        assert_eq!(items(&q), vec![1, 2]);
        check_links(&q);
    }

    #[test]
    fn remove_from_middle_head_and_tail() {
        let mut q = FreeKvBlockQueue::new(6);
        q.remove(3);
        assert_eq!(items(&q), vec![0, 1, 2, 4, 5]);
        check_links(&q);
        q.remove(0);
        assert_eq!(items(&q), vec![1, 2, 4, 5]);
        q.remove(5);
        assert_eq!(items(&q), vec![1, 2, 4]);
        check_links(&q);
        q.append(3);
        q.append(0);
        assert_eq!(items(&q), vec![1, 2, 4, 3, 0]);
        q.remove(4);
        q.remove(1);
        q.remove(0);
        assert_eq!(items(&q), vec![2, 3]);
        check_links(&q);
        q.remove(2);
        q.remove(3);
        assert!(q.is_empty());
        check_links(&q);
    }

    #[test]
    fn popleft_n_all_or_nothing() {
        let mut q = FreeKvBlockQueue::new(4);
        let mut out = vec![9];
        assert!(!q.popleft_n(5, &mut out));
        assert_eq!(out, vec![9]);
        assert_eq!(q.len(), 4);
        assert!(q.popleft_n(3, &mut out));
        assert_eq!(out, vec![9, 0, 1, 2]);
        assert_eq!(items(&q), vec![3]);
    }

    #[test]
    #[should_panic(expected = "already in the free queue")]
    fn double_append_panics() {
        let mut q = FreeKvBlockQueue::new(2);
        q.append(1);
    }

    #[test]
    #[should_panic(expected = "not in the free queue")]
    fn remove_absent_panics() {
        let mut q = FreeKvBlockQueue::new(2);
        q.remove(1);
        q.remove(1);
    }
}
