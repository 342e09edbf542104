//! KV storage: per layer, `num_blocks x block_size` slots of `num_kv_heads x head_dim`
//! values for K and for V, in f32 or f16 (`KvDtype`). Slot `s` of block `b` is row
//! `b * block_size + s`.

use half::f16;
use half::vec::HalfBitsVecExt;

/// Element type of the stored keys and values. f16 halves the cache (as llama.cpp and
/// vLLM keep it); f32 keeps attention bit-for-bit equal to an f32 reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// One layer's keys or values.
pub enum KvData {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvData {
    /// `n` zero values. The memory comes zeroed from the allocator, so pages no token
    /// has been written to stay out of the resident set.
    fn zeroed(dtype: KvDtype, n: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvData::F32(vec![0.0; n]),
            // `vec![f16::ZERO; n]` would write (and so touch) every page.
            KvDtype::F16 => KvData::F16(vec![0u16; n].reinterpret_into()),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvData::F32(v) => v.len(),
            KvData::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the `n` values at `src` to `dst` (ranges in values).
    pub fn copy_within(&mut self, src: usize, dst: usize, n: usize) {
        match self {
            KvData::F32(v) => v.copy_within(src..src + n, dst),
            KvData::F16(v) => v.copy_within(src..src + n, dst),
        }
    }
}

pub struct KvLayer {
    pub k: KvData,
    pub v: KvData,
    /// Values per slot: `num_kv_heads * head_dim`.
    pub row_len: usize,
    pub block_size: usize,
}

impl KvLayer {
    pub fn dtype(&self) -> KvDtype {
        match self.k {
            KvData::F32(_) => KvDtype::F32,
            KvData::F16(_) => KvDtype::F16,
        }
    }
}

pub struct KvCache {
    pub layers: Vec<KvLayer>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, row_len: usize) -> Self {
        Self::with_dtype(num_layers, num_blocks, block_size, row_len, KvDtype::F32)
    }

    pub fn with_dtype(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        row_len: usize,
        dtype: KvDtype,
    ) -> Self {
        let n = num_blocks * block_size * row_len;
        let layers = (0..num_layers)
            .map(|_| KvLayer {
                k: KvData::zeroed(dtype, n),
                v: KvData::zeroed(dtype, n),
                row_len,
                block_size,
            })
            .collect();
        KvCache {
            layers,
            num_blocks,
            block_size,
        }
    }

    pub fn dtype(&self) -> KvDtype {
        self.layers.first().map_or(KvDtype::F32, KvLayer::dtype)
    }

    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(
        num_layers: usize,
        block_size: usize,
        row_len: usize,
        dtype: KvDtype,
    ) -> usize {
        2 * num_layers * block_size * row_len * dtype.size()
    }
}
