//! The CPU backend: rayon-parallel kernels on a pool of `num_threads` workers.

pub mod attention;
pub mod linear;
pub mod moe;
pub mod ops;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_amx;
#[cfg(target_arch = "x86_64")]
mod packed_avx512;
pub mod qdot;
pub mod qdot_avx2;
pub mod qdot_avx512;
pub mod qdot_q8;
pub mod qdot_q8_avx2;
pub mod qdot_q8_avx512;
pub mod qdot_q8_scalar;
pub mod qdot_scalar;
mod scratch;

pub use linear::MatmulPrecision;

use super::{AttnMeta, Backend, MoeScratch, RopeTable};
use crate::kv::{KvCache, KvLayer};
use crate::model::arch::MoeSpec;
use crate::model::weights::{Ffn, ModelWeights, MoeWeights};
use crate::tensor::Weight;
use packed::PackedRows;
use parking_lot::Mutex;
use rayon::prelude::*;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A raw pointer that parallel tasks share to write disjoint parts of one output.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// Method access makes closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

pub struct CpuBackend {
    /// Dropped by hand in `Drop`, before the workers are joined.
    pool: ManuallyDrop<rayon::ThreadPool>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    routing: Mutex<moe::Routing>,
    precision: MatmulPrecision,
}

impl CpuBackend {
    /// A backend with its own pool of `num_threads` worker threads (0: one per core),
    /// with exact f32 matmuls (`MatmulPrecision::Exact`).
    pub fn new(num_threads: usize) -> Self {
        Self::with_precision(num_threads, MatmulPrecision::Exact)
    }

    /// A backend whose matmuls by quantized weights use `precision`
    /// (`MatmulPrecision::Int8Activations`: the faster integer path).
    pub fn with_precision(num_threads: usize, precision: MatmulPrecision) -> Self {
        // Spawn the workers ourselves to keep their handles: a host that unloads the
        // library after freeing an engine must find no library thread still running.
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let handles = workers.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(num_threads)
            .spawn_handler(move |thread| {
                let name = format!("llmrt-cpu-{}", thread.index());
                let h = std::thread::Builder::new()
                    .name(name)
                    .spawn(|| thread.run())?;
                handles.lock().push(h);
                Ok(())
            })
            .build()
            .expect("failed to start the CPU worker threads");
        CpuBackend {
            pool: ManuallyDrop::new(pool),
            workers,
            routing: Mutex::new(moe::Routing::default()),
            precision,
        }
    }

    pub fn precision(&self) -> MatmulPrecision {
        self.precision
    }

    pub fn num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Repacks the linear layers' weights for this backend's kernels, once at load (with
    /// int8 activations on AVX-512 VNNI: 16 rows interleaved, see `packed`); the stored
    /// rows' memory is given back. Other weights, and other precisions, are left as stored.
    pub fn prepare_weights(&self, weights: &mut ModelWeights) {
        if self.precision != MatmulPrecision::Int8Activations || !packed::enabled() {
            return;
        }
        let tied = weights.embed.shares_bytes(&weights.lm_head);
        let mut linears: Vec<&mut Weight> = vec![&mut weights.lm_head];
        for l in &mut weights.layers {
            linears.extend([&mut l.q, &mut l.k, &mut l.v, &mut l.o]);
            if let Ffn::Dense(m) = &mut l.ffn {
                linears.extend([&mut m.gate, &mut m.up, &mut m.down]);
            }
        }
        self.pool.install(|| {
            linears
                .into_par_iter()
                .filter(|w| w.shape.len() == 2 && packed::packable(w.dtype, w.cols()))
                .for_each(|w| {
                    let p = PackedRows::pack(w.dtype, w.bytes(), w.rows(), w.cols());
                    w.set_packed(Arc::new(p));
                })
        });
        // Tied embeddings read their rows from the output projection's packed copy.
        if tied {
            if let Some(p) = weights.lm_head.packed_arc() {
                weights.embed.set_packed(p);
            }
        }
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: the pool is not used after this point.
        unsafe { ManuallyDrop::drop(&mut self.pool) };
        for h in self.workers.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn alloc(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn embed(&self, ids: &[u32], table: &Weight, out: &mut Vec<f32>) {
        match table.packed::<PackedRows>() {
            // Tied to a packed output projection: the stored rows were released.
            Some(p) => self.pool.install(|| {
                out[..ids.len() * p.k]
                    .par_chunks_mut(p.k)
                    .zip(ids.par_iter())
                    .for_each(|(row, &id)| p.dequantize_row(id as usize, row))
            }),
            None => self.pool.install(|| ops::embed(ids, table, out)),
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, rows: usize, w: &Weight, eps: f32, out: &mut Vec<f32>) {
        self.pool.install(|| ops::rms_norm(x, rows, w, eps, out));
    }

    fn add_rms_norm(
        &self,
        x: &Vec<f32>,
        residual: &mut Vec<f32>,
        rows: usize,
        w: &Weight,
        eps: f32,
        out: &mut Vec<f32>,
    ) {
        self.pool
            .install(|| ops::add_rms_norm(x, residual, rows, w, eps, out));
    }

    fn head_rms_norm(&self, x: &mut Vec<f32>, len: usize, w: &Weight, eps: f32) {
        self.pool.install(|| ops::head_rms_norm(x, len, w, eps));
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &Weight,
        bias: Option<&Weight>,
        out: &mut Vec<f32>,
    ) {
        let p = self.precision;
        self.pool
            .install(|| linear::linear(x, rows, w, bias, out, p));
    }

    fn linear_many(
        &self,
        x: &Vec<f32>,
        rows: usize,
        ws: &[(&Weight, Option<&Weight>)],
        outs: &mut [&mut Vec<f32>],
    ) {
        let p = self.precision;
        let mut slices: [&mut [f32]; linear::MAX_FUSED] = Default::default();
        let n = outs.len().min(linear::MAX_FUSED);
        for (s, o) in slices.iter_mut().zip(outs.iter_mut()) {
            *s = o.as_mut_slice();
        }
        self.pool
            .install(|| linear::linear_many(x, rows, ws, &mut slices[..n], p));
    }

    fn rope(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        positions: &[u32],
        num_heads: usize,
        num_kv_heads: usize,
        rope: &RopeTable,
    ) {
        self.pool
            .install(|| ops::rope(q, k, positions, num_heads, num_kv_heads, rope));
    }

    fn write_kv(&self, k: &Vec<f32>, v: &Vec<f32>, slots: &[u32], cache: &mut KvLayer) {
        ops::write_kv(k, v, slots, cache);
    }

    fn paged_attention(&self, q: &Vec<f32>, cache: &KvLayer, meta: &AttnMeta, out: &mut Vec<f32>) {
        self.pool
            .install(|| attention::paged_attention(q, cache, meta, out));
    }

    fn add(&self, x: &Vec<f32>, acc: &mut Vec<f32>, n: usize) {
        for (a, v) in acc[..n].iter_mut().zip(&x[..n]) {
            *a += v;
        }
    }

    fn silu_mul(&self, gate: &Vec<f32>, up: &Vec<f32>, n: usize, out: &mut Vec<f32>) {
        self.pool.install(|| ops::silu_mul(gate, up, n, out));
    }

    fn moe(
        &self,
        x: &Vec<f32>,
        rows: usize,
        experts: &MoeWeights,
        spec: &MoeSpec,
        scratch: &mut MoeScratch<Vec<f32>>,
        out: &mut Vec<f32>,
    ) {
        let mut guard = self.routing.lock();
        let routing: &mut moe::Routing = &mut guard;
        self.pool.install(|| {
            moe::moe(
                x,
                rows,
                experts,
                spec,
                scratch,
                routing,
                out,
                self.precision,
            )
        });
    }

    fn copy_blocks(&self, cache: &mut KvCache, pairs: &[(u32, u32)]) {
        for layer in &mut cache.layers {
            for &(src, dst) in pairs {
                ops::copy_block(layer, src, dst);
            }
        }
    }

    fn logits(
        &self,
        hidden: &Vec<f32>,
        rows: &[u32],
        norm: &Weight,
        eps: f32,
        head: &Weight,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let h = norm.numel();
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            scratch[i * h..(i + 1) * h].copy_from_slice(&hidden[r * h..(r + 1) * h]);
        }
        self.pool.install(|| {
            ops::rms_norm_inplace(scratch, rows.len(), norm, eps);
            linear::linear(scratch, rows.len(), head, None, out, self.precision);
        });
    }
}
