//! ModelRunner: runs a `ForwardBatch` through the decoder over the KV cache and returns
//! the logits of the requested rows.

use crate::backend::cpu::CpuBackend;
use crate::kv::KvCache;
use crate::model::arch::ArchSpec;
use crate::model::decoder::{Decoder, ForwardBatch};
use crate::model::ModelWeights;

pub struct ModelRunner {
    decoder: Decoder<CpuBackend>,
    pub kv: KvCache,
    logits: Vec<f32>,
    vocab_size: usize,
}

impl ModelRunner {
    pub fn new(
        spec: ArchSpec,
        weights: ModelWeights,
        num_threads: usize,
        max_num_batched_tokens: usize,
        max_model_len: usize,
        num_kv_blocks: usize,
        block_size: usize,
    ) -> Self {
        let vocab_size = spec.vocab_size;
        let kv = KvCache::new(spec.num_layers, num_kv_blocks, block_size, spec.kv_size());
        let decoder = Decoder::new(
            CpuBackend::new(num_threads),
            spec,
            weights,
            max_num_batched_tokens,
            max_model_len,
        );
        ModelRunner {
            decoder,
            kv,
            logits: Vec::new(),
            vocab_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn spec(&self) -> &ArchSpec {
        &self.decoder.spec
    }

    /// Runs one step. Returns `batch.logits_rows.len() x vocab_size` logits.
    pub fn execute(&mut self, batch: &ForwardBatch) -> &mut [f32] {
        let n = batch.logits_rows.len() * self.vocab_size;
        if self.logits.len() < n {
            self.logits.resize(n, 0.0);
        }
        self.decoder
            .forward(batch, &mut self.kv, &mut self.logits[..n]);
        &mut self.logits[..n]
    }
}
