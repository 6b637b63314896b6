//! A small f32 GEMM whose operands are packed before the call: the left one once per model
//! (a layer's transformed weights), the right one by its producer (the Winograd input
//! transform writes straight into the packed layout). The `gemm` crate packs both operands on
//! every call, which for weights that never change is a full copy of them per sample.

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;
/// Depth of one pass over the operands: a right panel (`KC x NR`, 16 KiB) stays in L1 while
/// the left panels stream past it.
const KC: usize = 256;
/// Rows of the left operand per pass over the right panels (96 x 256 values: 96 KiB in L2).
const MC: usize = 96;

/// A left operand `[m, k]` in panels of `MR` rows, each `[k][MR]`; rows past `m` are zero.
pub(crate) struct PackedLhs {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedLhs {
    /// An all-zero `[m, k]` matrix, to be filled through [`Self::panels_mut`].
    pub(crate) fn zeroed(m: usize, k: usize) -> Self {
        PackedLhs {
            data: vec![0f32; m.div_ceil(MR) * MR * k],
            m,
            k,
        }
    }

    /// The panels, each `[k][MR]`: rows `p * MR..` of the matrix (rows past `m` must stay 0).
    pub(crate) fn panels_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(MR * self.k.max(1))
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }
}

/// Values in a packed right operand `[k, n]`: panels of `NR` columns, each `[k][NR]`;
/// columns past `n` must be zero (they are computed and dropped).
pub(crate) fn rhs_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Where element `(kk, j)` of a packed right operand `[k, n]` lives.
#[inline(always)]
pub(crate) fn rhs_index(k: usize, kk: usize, j: usize) -> usize {
    (j / NR) * k * NR + kk * NR + j % NR
}

/// `c[i * ldc + j] = sum over kk of a(i, ks[kk]) * b(kk, j)` for `i < a.m`, `j < n`: the
/// product over the columns `ks` of `a` only (all of them when `None`), with `b` packed as
/// [`rhs_index`] says for a depth of `ks.len()`. Skipping columns this way reads the packed
/// weights in place: no copy of them per call.
pub(crate) fn gemm(
    a: &PackedLhs,
    ks: Option<&[usize]>,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let m = a.m;
    let k = ks.map_or(a.k, <[usize]>::len);
    assert_eq!(b.len(), rhs_len(k, n));
    assert!(m == 0 || n == 0 || c.len() >= (m - 1) * ldc + n);
    assert!(ks.is_none_or(|ks| ks.iter().all(|&kk| kk < a.k)));
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    let blocks = k.div_ceil(KC);
    let kc_len = k.div_ceil(blocks);
    let mut tile = [[0f32; NR]; MR];
    for kb in 0..blocks {
        let k0 = kb * kc_len;
        let kc = kc_len.min(k - k0);
        for ic in (0..m).step_by(MC) {
            for j0 in (0..n).step_by(NR) {
                let cols = NR.min(n - j0);
                let bp = &b[(j0 / NR) * k * NR + k0 * NR..][..kc * NR];
                for ir in (ic..(ic + MC).min(m)).step_by(MR) {
                    let panel = &a.data[(ir / MR) * a.k * MR..][..a.k * MR];
                    match ks {
                        None => kernel(&panel[k0 * MR..][..kc * MR], None, bp, &mut tile),
                        Some(ks) => kernel(panel, Some(&ks[k0..k0 + kc]), bp, &mut tile),
                    }
                    for (i, t) in tile.iter().enumerate().take(m - ir) {
                        let d = &mut c[(ir + i) * ldc + j0..][..cols];
                        if kb == 0 {
                            d.copy_from_slice(&t[..cols]);
                        } else {
                            d.iter_mut().zip(t).for_each(|(d, t)| *d += t);
                        }
                    }
                }
            }
        }
    }
}

/// `tile = a_panel * b_panel` over the depth of `b`: `a`'s columns in order, or those in `ks`.
fn kernel(a: &[f32], ks: Option<&[usize]>, b: &[f32], tile: &mut [[f32; NR]; MR]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { kernel_avx2(a, ks, b, tile) };
    }
    // Fused multiply-add only where the CPU surely has it: on an x86-64 without FMA,
    // `mul_add` is a libm call per element.
    kernel_any::<{ !cfg!(target_arch = "x86_64") }>(a, ks, b, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kernel_avx2(a: &[f32], ks: Option<&[usize]>, b: &[f32], tile: &mut [[f32; NR]; MR]) {
    kernel_any::<true>(a, ks, b, tile)
}

/// Written so that the accumulators (`MR x NR` = 12 AVX registers) stay in registers.
#[inline(always)]
fn kernel_any<const FMA: bool>(
    a: &[f32],
    ks: Option<&[usize]>,
    b: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    #[inline(always)]
    fn step<const FMA: bool>(acc: &mut [[f32; NR]; MR], a: &[f32], b: &[f32]) {
        let a: &[f32; MR] = a.try_into().unwrap();
        let b: &[f32; NR] = b.try_into().unwrap();
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &b) in acc.iter_mut().zip(b) {
                *acc = if FMA {
                    a.mul_add(b, *acc)
                } else {
                    *acc + a * b
                };
            }
        }
    }
    let mut acc = [[0f32; NR]; MR];
    match ks {
        None => {
            for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
                step::<FMA>(&mut acc, a, b);
            }
        }
        Some(ks) => {
            for (&kk, b) in ks.iter().zip(b.chunks_exact(NR)) {
                step::<FMA>(&mut acc, &a[kk * MR..(kk + 1) * MR], b);
            }
        }
    }
    *tile = acc;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[m, k]` matrix whose element `(i, kk)` is `at(i, kk)`, filled as the Winograd
    /// weights are: panel by panel.
    fn pack_lhs(m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> PackedLhs {
        let mut a = PackedLhs::zeroed(m, k);
        for (p, panel) in a.panels_mut().enumerate() {
            for (kk, col) in panel.chunks_exact_mut(MR).enumerate().take(k) {
                for (i, v) in col.iter_mut().enumerate().take(m - p * MR) {
                    *v = at(p * MR + i, kk);
                }
            }
        }
        a
    }

    fn pack_rhs(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let mut b = vec![0f32; rhs_len(k, n)];
        for kk in 0..k {
            for j in 0..n {
                b[rhs_index(k, kk, j)] = at(kk, j);
            }
        }
        b
    }

    /// Odd sizes (edges in every dimension) and depths over one `KC` pass, every column and
    /// a reversed subset of them (the skipping path), against a plain triple loop in f64.
    #[test]
    fn packed_gemm_matches_naive_product() {
        let a_at = |i: usize, kk: usize| ((i * 7 + kk * 13) % 17) as f32 / 8.0 - 1.0;
        let b_at = |kk: usize, j: usize| ((kk * 5 + j * 11) % 19) as f32 / 9.0 - 1.0;
        let sizes = [
            (1, 1, 1),
            (7, 3, 17),
            (13, 300, 33),
            (64, 600, 5),
            (100, 0, 4),
        ];
        for (m, k, n) in sizes {
            let a = pack_lhs(m, k, a_at);
            let every_third: Vec<usize> = (0..k).rev().step_by(3).collect();
            for ks in [None, Some(every_third.as_slice())] {
                let depth = ks.map_or(k, <[usize]>::len);
                let col = |kk: usize| ks.map_or(kk, |ks| ks[kk]);
                let b = pack_rhs(depth, n, |kk, j| b_at(col(kk), j));
                let ldc = n + 3;
                let mut c = vec![f32::NAN; m * ldc];
                gemm(&a, ks, &b, n, &mut c, ldc);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..depth)
                            .map(|kk| a_at(i, col(kk)) as f64 * b_at(col(kk), j) as f64)
                            .sum();
                        let got = c[i * ldc + j];
                        let at = format!("{m}x{k}x{n}, depth {depth}, at ({i}, {j})");
                        assert!((got as f64 - want).abs() < 1e-4, "{at}: {got} vs {want}");
                    }
                    let past = &c[i * ldc + n..(i + 1) * ldc];
                    assert!(past.iter().all(|v| v.is_nan()), "wrote past n");
                }
            }
        }
    }
}
