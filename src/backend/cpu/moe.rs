//! Mixture-of-experts feed-forward: route each token to its top-k experts, run each expert
//! over the tokens routed to it, add the weighted outputs; plus Qwen2-MoE's gated shared expert.
//! The router and the shared-expert gate stay exact (routing decisions are discrete).

use super::{linear::linear, ops, MatmulPrecision};
use crate::backend::MoeScratch;
use crate::model::arch::MoeSpec;
use crate::model::weights::{DenseMlp, MoeWeights};

/// Routing of one step, reused between steps.
#[derive(Default)]
pub struct Routing {
    /// Per expert: the token rows routed to it and their weights.
    pub rows: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
}

/// Fills `routing` from router logits `[rows, num_experts]`: softmax over all experts in
/// f32, the top-k by probability (lower index first on ties), optionally renormalised.
pub fn route(logits: &[f32], rows: usize, spec: &MoeSpec, routing: &mut Routing) {
    let e = spec.num_experts;
    routing.rows.resize_with(e, Vec::new);
    routing.weights.resize_with(e, Vec::new);
    routing.rows.iter_mut().for_each(Vec::clear);
    routing.weights.iter_mut().for_each(Vec::clear);
    let mut probs = [0f32; 1024];
    let mut chosen = [0usize; 1024];
    for t in 0..rows {
        let l = &logits[t * e..(t + 1) * e];
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (p, &v) in probs.iter_mut().zip(l) {
            *p = (v - max).exp();
            sum += *p;
        }
        probs[..e].iter_mut().for_each(|p| *p /= sum);
        let k = spec.top_k;
        for slot in 0..k {
            let mut best = usize::MAX;
            for x in 0..e {
                if chosen[..slot].contains(&x) {
                    continue;
                }
                if best == usize::MAX || probs[x] > probs[best] {
                    best = x;
                }
            }
            chosen[slot] = best;
        }
        let norm: f32 = if spec.renormalize {
            chosen[..k].iter().map(|&x| probs[x]).sum()
        } else {
            1.0
        };
        for &x in &chosen[..k] {
            routing.rows[x].push(t as u32);
            routing.weights[x].push(probs[x] / norm);
        }
    }
}

fn dense_mlp(
    x: &[f32],
    rows: usize,
    m: &DenseMlp,
    s: &mut MoeScratch<Vec<f32>>,
    out: &mut [f32],
    p: MatmulPrecision,
) {
    let inter = m.gate.rows();
    linear(x, rows, &m.gate, None, &mut s.gate, p);
    linear(x, rows, &m.up, None, &mut s.up, p);
    ops::silu_mul(&s.gate, &s.up, rows * inter, &mut s.act);
    linear(&s.act, rows, &m.down, None, out, p);
}

pub fn moe(
    x: &[f32],
    rows: usize,
    w: &MoeWeights,
    spec: &MoeSpec,
    s: &mut MoeScratch<Vec<f32>>,
    routing: &mut Routing,
    out: &mut [f32],
    precision: MatmulPrecision,
) {
    let h = w.router.cols();
    linear(
        x,
        rows,
        &w.router,
        None,
        &mut s.router_logits,
        MatmulPrecision::Exact,
    );
    route(&s.router_logits, rows, spec, routing);
    out[..rows * h].fill(0.0);
    for (e, expert) in w.experts.iter().enumerate() {
        let routed = &routing.rows[e];
        if routed.is_empty() {
            continue;
        }
        for (i, &r) in routed.iter().enumerate() {
            let r = r as usize;
            s.gathered[i * h..(i + 1) * h].copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let gathered = std::mem::take(&mut s.gathered);
        let mut expert_out = std::mem::take(&mut s.expert_out);
        dense_mlp(
            &gathered,
            routed.len(),
            expert,
            s,
            &mut expert_out,
            precision,
        );
        ops::scatter_add_rows(&expert_out, routed, &routing.weights[e], h, out);
        s.gathered = gathered;
        s.expert_out = expert_out;
    }
    if let Some((shared, gate)) = &w.shared {
        let mut expert_out = std::mem::take(&mut s.expert_out);
        dense_mlp(x, rows, shared, s, &mut expert_out, precision);
        // The gate has one output: reuse the router-logits buffer for it.
        linear(
            x,
            rows,
            gate,
            None,
            &mut s.router_logits,
            MatmulPrecision::Exact,
        );
        for t in 0..rows {
            let g = 1.0 / (1.0 + (-s.router_logits[t]).exp());
            for (o, v) in out[t * h..(t + 1) * h]
                .iter_mut()
                .zip(&expert_out[t * h..(t + 1) * h])
            {
                *o += g * v;
            }
        }
        s.expert_out = expert_out;
    }
}
