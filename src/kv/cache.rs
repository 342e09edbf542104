//! KV storage: per layer, `num_blocks x block_size` slots of `num_kv_heads x head_dim` f32
//! for K and for V. Slot `s` of block `b` is row `b * block_size + s`.

pub struct KvLayer {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Values per slot: `num_kv_heads * head_dim`.
    pub row_len: usize,
    pub block_size: usize,
}

pub struct KvCache {
    pub layers: Vec<KvLayer>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, num_blocks: usize, block_size: usize, row_len: usize) -> Self {
        let n = num_blocks * block_size * row_len;
        let layers = (0..num_layers)
            .map(|_| KvLayer {
                k: vec![0.0; n],
                v: vec![0.0; n],
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

    /// Bytes one block takes over all layers (K and V).
    pub fn bytes_per_block(num_layers: usize, block_size: usize, row_len: usize) -> usize {
        2 * num_layers * block_size * row_len * std::mem::size_of::<f32>()
    }
}
