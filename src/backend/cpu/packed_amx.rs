//! AMX-BF16 tiles for dense (F16/BF16) weights with many tokens: `tdpbf16ps` multiplies
//! a 16-token x 32-value bf16 tile by a 32-value x 16-row tile in one instruction (16x the
//! work of a `vdpbf16ps`). The weight tile is the one `packed_avx512::bf16_tile` builds:
//! line `p` holds the bf16 pair `(2p, 2p + 1)` of 16 rows, which is AMX's B layout.
//! Activations are plain bf16 rows, padded with zero rows to a multiple of 32.
#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::sync::OnceLock;

/// Tokens per AMX block (two A tiles of 16 rows).
pub const AMX_TOKENS: usize = 32;

/// Whether AMX-BF16 can run in this process: the CPU has it and Linux granted the
/// tile-data state (asked once per process). `LLMRT_ISA` set to anything below `avx512`
/// turns it off with the other wide kernels (see `qdot`).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked first).
        let cpu = super::packed::enabled() && {
            let r = std::arch::x86_64::__cpuid_count(7, 0);
            r.edx & (1 << 22) != 0 && r.edx & (1 << 24) != 0
        };
        cpu && request_tile_data()
    })
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: without it the first tile
/// instruction faults.
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: the syscall only changes this process's permitted xsave features.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

/// Tile configuration: tiles 0-3 are 16 x 16 f32 results, 4-5 token tiles (16 rows of
/// 32 bf16), 6-7 weight tiles (16 pair lines of 16 rows).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

fn config() -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1; // palette 1
    for t in 0..8 {
        c[16 + 2 * t] = 64; // bytes per row
        c[48 + t] = 16; // rows
    }
    TileConfig(c)
}

/// `out[t * 32 + 16 i + lane] = x row t · row lane of group i` for every token row of
/// `x` (`rows` rows of `k` bf16, `rows` a multiple of 32) and the `G` groups of `tile`.
///
/// # Safety
/// `available()`; `k` a multiple of 32; `tile` holds `k / 2 * G` lines of 64 bytes;
/// `x` holds `rows * k` bf16; `out` `rows * 32` f32.
pub unsafe fn tile_dots<const G: usize>(
    tile: *const u8,
    k: usize,
    x: *const u16,
    rows: usize,
    out: *mut f32,
) {
    let cfg = config();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
    let (xs, ws, os) = (2 * k, 64 * G, 4 * 32usize);
    for t0 in (0..rows).step_by(AMX_TOKENS) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for kc in (0..k).step_by(32) {
            let a0 = x.add(t0 * k + kc);
            let a1 = a0.add(16 * k);
            let b0 = tile.add(64 * (kc / 2 * G));
            // Group 1's lines sit between group 0's (line p * G + i).
            let b1 = b0.add(64 * (G - 1));
            asm!(
                "tileloadd tmm4, [{a0} + {xs}*1]",
                "tileloadd tmm5, [{a1} + {xs}*1]",
                "tileloadd tmm6, [{b0} + {ws}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, xs = in(reg) xs, ws = in(reg) ws,
                options(nostack),
            );
            if G == 2 {
                asm!(
                    "tileloadd tmm7, [{b1} + {ws}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    b1 = in(reg) b1, ws = in(reg) ws,
                    options(nostack),
                );
            }
        }
        let o0 = out.add(t0 * 32);
        let o1 = o0.add(16 * 32);
        asm!(
            "tilestored [{o0} + {os}*1], tmm0",
            "tilestored [{o1} + {os}*1], tmm2",
            o0 = in(reg) o0, o1 = in(reg) o1, os = in(reg) os,
            options(nostack),
        );
        if G == 2 {
            asm!(
                "tilestored [{o0} + {os}*1], tmm1",
                "tilestored [{o1} + {os}*1], tmm3",
                o0 = in(reg) o0.add(16), o1 = in(reg) o1.add(16), os = in(reg) os,
                options(nostack),
            );
        }
    }
    asm!("tilerelease", options(nostack));
}
