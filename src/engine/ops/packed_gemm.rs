//! A small f32 GEMM whose operands are packed before the call: the left one once per model
//! (a layer's transformed weights), the right one by its producer (the Winograd input
//! transform writes straight into the packed layout). A general GEMM packs both operands on
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

    /// The `[m, k]` matrix whose element `(i, kk)` is `src[i * rs + kk * cs]` (a transpose
    /// is a swap of strides).
    pub(crate) fn from_rows(src: &[f32], m: usize, k: usize, (rs, cs): (usize, usize)) -> Self {
        use rayon::prelude::*;
        assert!(m == 0 || k == 0 || src.len() > (m - 1) * rs + (k - 1) * cs);
        let mut a = Self::zeroed(m, k);
        if k > 0 {
            a.data
                .par_chunks_exact_mut(MR * k)
                .enumerate()
                .for_each(|(p, panel)| {
                    for (kk, col) in panel.chunks_exact_mut(MR).enumerate() {
                        for (i, v) in col.iter_mut().enumerate().take(m - p * MR) {
                            *v = src[(p * MR + i) * rs + kk * cs];
                        }
                    }
                });
        }
        a
    }

    /// The `[m, k]` matrix of `m` contiguous rows of `src`, packed on this thread (callers
    /// already split the work).
    pub(crate) fn from_block(src: &[f32], m: usize, k: usize) -> Self {
        Self::from_block_by::<false>(src, &[], m, k)
    }

    /// As [`Self::from_block`], each value times the one at the same place in `scale` (a
    /// gradient through an elementwise function whose derivative the forward pass kept).
    pub(crate) fn from_block_scaled(src: &[f32], scale: &[f32], m: usize, k: usize) -> Self {
        assert!(scale.len() >= m * k);
        Self::from_block_by::<true>(src, scale, m, k)
    }

    #[inline(always)]
    fn from_block_by<const SCALED: bool>(src: &[f32], scale: &[f32], m: usize, k: usize) -> Self {
        assert!(src.len() >= m * k);
        let value = |i: usize| if SCALED { src[i] * scale[i] } else { src[i] };
        let mut a = Self::zeroed(m, k);
        if k > 0 {
            for (p, panel) in a.data.chunks_exact_mut(MR * k).enumerate() {
                let rows = MR.min(m - p * MR);
                if rows < MR {
                    for i in 0..rows {
                        for kk in 0..k {
                            panel[kk * MR + i] = value((p * MR + i) * k + kk);
                        }
                    }
                    continue;
                }
                // Six rows read side by side, each panel column written whole.
                let r: [&[f32]; MR] = std::array::from_fn(|i| &src[(p * MR + i) * k..][..k]);
                let s: [&[f32]; MR] = std::array::from_fn(|i| {
                    if SCALED {
                        &scale[(p * MR + i) * k..][..k]
                    } else {
                        &[]
                    }
                });
                for (kk, col) in panel.chunks_exact_mut(MR).enumerate() {
                    let col: &mut [f32; MR] = col.try_into().unwrap();
                    *col = std::array::from_fn(|i| {
                        if SCALED {
                            r[i][kk] * s[i][kk]
                        } else {
                            r[i][kk]
                        }
                    });
                }
            }
        }
        a
    }

    /// The `[m, k]` matrix whose element `(i, kk)` is `src[kk * stride + i]`: `m` pixels of
    /// `k` channel planes (an NCHW tensor read as rows of channels), packed on this thread.
    pub(crate) fn from_planes(src: &[f32], m: usize, k: usize, stride: usize) -> Self {
        assert!(m <= stride && (m == 0 || k == 0 || src.len() >= (k - 1) * stride + m));
        let mut a = Self::zeroed(m, k);
        if k > 0 {
            for (p, panel) in a.data.chunks_exact_mut(MR * k).enumerate() {
                let rows = MR.min(m - p * MR);
                for (kk, col) in panel.chunks_exact_mut(MR).enumerate() {
                    col[..rows].copy_from_slice(&src[kk * stride + p * MR..][..rows]);
                }
            }
        }
        a
    }

    /// The panels, each `[k][MR]`: rows `p * MR..` of the matrix (rows past `m` must stay 0).
    pub(crate) fn panels_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(MR * self.k.max(1))
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn m(&self) -> usize {
        self.m
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

/// The packed right operand of the `[k, n]` matrix whose element `(kk, j)` is `at(kk, j)`,
/// panels filled in parallel.
pub(crate) fn pack_rhs(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut b = vec![0f32; rhs_len(k, n)];
    if k > 0 {
        b.par_chunks_exact_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                    for (jj, v) in row.iter_mut().enumerate().take(n - p * NR) {
                        *v = at(kk, p * NR + jj);
                    }
                }
            });
    }
    b
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
    assert!(m == 0 || n == 0 || (ldc >= n && c.len() >= (m - 1) * ldc + n));
    assert!(ks.is_none_or(|ks| ks.iter().all(|&kk| kk < a.k)));
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx512() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { gemm_avx512(a, ks, b, n, c, ldc) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { gemm_avx2(a, ks, b, n, c, ldc) };
    }
    gemm_any::<{ super::simd::PORTABLE_FMA }, false>(a, ks, b, n, c, ldc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(a: &PackedLhs, ks: Option<&[usize]>, b: &[f32], n: usize, c: &mut [f32], ldc: usize) {
    gemm_any::<true, false>(a, ks, b, n, c, ldc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemm_avx512(
    a: &PackedLhs,
    ks: Option<&[usize]>,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_any::<true, true>(a, ks, b, n, c, ldc)
}

/// The blocked loops; the micro-kernel and its stores inline into the caller's features.
/// `WIDE`: two row panels per step (12 x 16, one 16-wide register per row: AVX-512's 32
/// registers hold the 12 accumulators with room to spare, and each loaded right row feeds
/// 12 multiply-adds instead of 6).
#[inline(always)]
fn gemm_any<const FMA: bool, const WIDE: bool>(
    a: &PackedLhs,
    ks: Option<&[usize]>,
    b: &[f32],
    n: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let m = a.m;
    let k = ks.map_or(a.k, <[usize]>::len);
    let blocks = k.div_ceil(KC);
    let kc_len = k.div_ceil(blocks);
    for kb in 0..blocks {
        let k0 = kb * kc_len;
        let kc = kc_len.min(k - k0);
        for ic in (0..m).step_by(MC) {
            let end = (ic + MC).min(m);
            let mut j0 = 0;
            while j0 < n {
                let cols = NR.min(n - j0);
                let bp = &b[(j0 / NR) * k * NR + k0 * NR..][..kc * NR];
                if WIDE && ks.is_none() && j0 + NR < n {
                    // Two right panels per left panel: each broadcast left value feeds two
                    // multiply-adds, so the kernel loads 8 values per 12 of them.
                    let bp1 = &b[(j0 / NR + 1) * k * NR + k0 * NR..][..kc * NR];
                    let cols1 = NR.min(n - j0 - NR);
                    let panel =
                        |ir: usize| &a.data[(ir / MR) * a.k * MR..][k0 * MR..(k0 + kc) * MR];
                    let mut ir = ic;
                    while ir < end {
                        let at = ir * ldc + j0;
                        if ir + MR < end {
                            // Two left panels too: 24 accumulators, 14 loads per 24
                            // multiply-adds.
                            let [t00, t01, t10, t11] =
                                product_2x2::<FMA>(panel(ir), panel(ir + MR), bp, bp1);
                            let rows = MR.min(m - ir - MR);
                            store(&t00, &mut c[at..], ldc, (MR, NR), kb > 0);
                            store(&t01, &mut c[at + NR..], ldc, (MR, cols1), kb > 0);
                            let at = at + MR * ldc;
                            store(&t10, &mut c[at..], ldc, (rows, NR), kb > 0);
                            store(&t11, &mut c[at + NR..], ldc, (rows, cols1), kb > 0);
                            ir += 2 * MR;
                            continue;
                        }
                        let (t0, t1) = product_cols2::<FMA>(panel(ir), bp, bp1);
                        let rows = MR.min(m - ir);
                        store(&t0, &mut c[at..], ldc, (rows, NR), kb > 0);
                        store(&t1, &mut c[at + NR..], ldc, (rows, cols1), kb > 0);
                        ir += MR;
                    }
                    j0 += 2 * NR;
                    continue;
                }
                let mut ir = ic;
                while ir < end {
                    let panel = |ir: usize| &a.data[(ir / MR) * a.k * MR..][..a.k * MR];
                    if WIDE && ir + MR < end {
                        let (p0, p1) = (panel(ir), panel(ir + MR));
                        let (t0, t1) = match ks {
                            None => {
                                let r = k0 * MR..(k0 + kc) * MR;
                                product2::<FMA>(&p0[r.clone()], &p1[r], bp)
                            }
                            // SAFETY: `gemm` checked `ks` against `a.k`.
                            Some(ks) => unsafe { product_of2::<FMA>(p0, p1, &ks[k0..k0 + kc], bp) },
                        };
                        let at = &mut c[ir * ldc + j0..];
                        store(&t0, at, ldc, (MR, cols), kb > 0);
                        let at = &mut c[(ir + MR) * ldc + j0..];
                        store(&t1, at, ldc, (MR.min(m - ir - MR), cols), kb > 0);
                        ir += 2 * MR;
                        continue;
                    }
                    let p = panel(ir);
                    let acc = match ks {
                        None => product::<FMA>(&p[k0 * MR..][..kc * MR], bp),
                        // SAFETY: `gemm` checked `ks` against `a.k`.
                        Some(ks) => unsafe { product_of::<FMA>(p, &ks[k0..k0 + kc], bp) },
                    };
                    let at = &mut c[ir * ldc + j0..];
                    store(&acc, at, ldc, (MR.min(m - ir), cols), kb > 0);
                    ir += MR;
                }
                j0 += NR;
            }
        }
    }
}

/// What [`tiles`] does with its results. Implementors mark both methods `#[inline(always)]`
/// so that they are compiled into the caller's kernel with its target features.
pub(crate) trait TileSink {
    /// Takes tile `(row, panel)`: rows `row..row + MR` of panel `panel`'s `NR` columns.
    fn tile(&mut self, row: usize, panel: usize, tile: &Tile);
    /// Follows each block of rows, once all of its tiles have been taken.
    fn rows_done(&mut self, rows: std::ops::Range<usize>);
}

/// Every `MR x NR` tile of `a * b` over one depth block of `panels` right panels of `NR`
/// columns: `panel(jp)` gives the columns of `a` that panel `jp` multiplies and its packed
/// values (`[depth][NR]`, depth = the number of those columns), so each panel may leave out
/// its own zero rows. Each tile goes to `sink`, block of rows by block of rows.
///
/// Inlined into the caller, whose target features it then uses: `FMA` (fused multiply-adds)
/// only where the caller's features include them.
#[inline(always)]
pub(crate) fn tiles<'p, const FMA: bool, const WIDE: bool>(
    a: &PackedLhs,
    panels: usize,
    panel: impl Fn(usize) -> (&'p [usize], &'p [f32]),
    sink: &mut impl TileSink,
) {
    let m = a.m;
    for ic in (0..m).step_by(MC) {
        for jp in 0..panels {
            let (ks, bp) = panel(jp);
            assert!(ks.len() * NR == bp.len() && ks.iter().all(|&kk| kk < a.k));
            let end = (ic + MC).min(m);
            let panel = |ir: usize| &a.data[(ir / MR) * a.k * MR..][..a.k * MR];
            let mut ir = ic;
            while ir < end {
                if WIDE && ir + MR < end {
                    // SAFETY: `ks` was checked against `a.k` above.
                    let (t0, t1) = unsafe { product_of2::<FMA>(panel(ir), panel(ir + MR), ks, bp) };
                    sink.tile(ir, jp, &t0);
                    sink.tile(ir + MR, jp, &t1);
                    ir += 2 * MR;
                    continue;
                }
                // SAFETY: `ks` was checked against `a.k` above.
                let acc = unsafe { product_of::<FMA>(panel(ir), ks, bp) };
                sink.tile(ir, jp, &acc);
                ir += MR;
            }
        }
        sink.rows_done(ic..(ic + MC).min(m));
    }
}

/// Writes (or with `add`, adds) the `rows x cols` corner of a tile into `c` (row stride
/// `ldc`); a whole tile goes straight from the registers.
#[inline(always)]
fn store(acc: &Tile, c: &mut [f32], ldc: usize, (rows, cols): (usize, usize), add: bool) {
    if rows == MR && cols == NR {
        for (i, acc) in acc.iter().enumerate() {
            let d: &mut [f32; NR] = (&mut c[i * ldc..i * ldc + NR]).try_into().unwrap();
            if add {
                d.iter_mut().zip(acc).for_each(|(d, a)| *d += a);
            } else {
                *d = *acc;
            }
        }
        return;
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let d = &mut c[i * ldc..i * ldc + cols];
        if add {
            d.iter_mut().zip(acc).for_each(|(d, a)| *d += a);
        } else {
            d.copy_from_slice(&acc[..cols]);
        }
    }
}

pub(crate) type Tile = [[f32; NR]; MR];

/// One multiply-add step of the micro-kernel: the accumulators (`MR x NR` = 12 AVX
/// registers) stay in registers.
#[inline(always)]
fn step<const FMA: bool>(acc: &mut Tile, a: &[f32], b: &[f32]) {
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

/// `a_panel * b_panel` over the depth of `b`, `a`'s columns in order.
#[inline(always)]
fn product<const FMA: bool>(a: &[f32], b: &[f32]) -> Tile {
    let mut acc = [[0f32; NR]; MR];
    let depth = (a.len() / MR).min(b.len() / NR);
    let whole = depth / UNROLL * UNROLL;
    let (a4, a) = a[..depth * MR].split_at(whole * MR);
    let (b4, b) = b[..depth * NR].split_at(whole * NR);
    for (a, b) in a4
        .chunks_exact(UNROLL * MR)
        .zip(b4.chunks_exact(UNROLL * NR))
    {
        for u in 0..UNROLL {
            step::<FMA>(&mut acc, &a[u * MR..][..MR], &b[u * NR..][..NR]);
        }
    }
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        step::<FMA>(&mut acc, a, b);
    }
    acc
}

/// Depth steps per pass of [`product`]'s loop: one loop test and one pointer update per four
/// steps (AVX2 on the EPYC: 60 -> 75-80 GFLOP/s on one core; same sums in the same order).
/// [`product_of`] unrolled this way was compiled to scalar code, ten times slower: keep its
/// loop as it is unless the generated code is checked.
const UNROLL: usize = 4;

/// `a_panel * b_panel` over `a`'s columns `ks`.
///
/// # Safety
/// Every `kk` in `ks` is below `a.len() / MR` (callers check the whole list once, not once
/// per tile: the check per step was a tenth of the kernel's time).
#[inline(always)]
unsafe fn product_of<const FMA: bool>(a: &[f32], ks: &[usize], b: &[f32]) -> Tile {
    let mut acc = [[0f32; NR]; MR];
    for (&kk, b) in ks.iter().zip(b.chunks_exact(NR)) {
        debug_assert!(kk < a.len() / MR);
        // SAFETY: in bounds by the caller's promise.
        let a = unsafe { a.get_unchecked(kk * MR..(kk + 1) * MR) };
        step::<FMA>(&mut acc, a, b);
    }
    acc
}

/// Two left panels times one right panel over the depth of `b`: twelve rows of accumulators.
#[inline(always)]
fn product2<const FMA: bool>(a0: &[f32], a1: &[f32], b: &[f32]) -> (Tile, Tile) {
    let (mut t0, mut t1) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
    for ((a0, a1), b) in a0
        .chunks_exact(MR)
        .zip(a1.chunks_exact(MR))
        .zip(b.chunks_exact(NR))
    {
        step::<FMA>(&mut t0, a0, b);
        step::<FMA>(&mut t1, a1, b);
    }
    (t0, t1)
}

/// One left panel times two right panels over the depth of `b0` (= `b1`'s).
#[inline(always)]
fn product_cols2<const FMA: bool>(a: &[f32], b0: &[f32], b1: &[f32]) -> (Tile, Tile) {
    let (mut t0, mut t1) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
    for ((a, b0), b1) in a
        .chunks_exact(MR)
        .zip(b0.chunks_exact(NR))
        .zip(b1.chunks_exact(NR))
    {
        step::<FMA>(&mut t0, a, b0);
        step::<FMA>(&mut t1, a, b1);
    }
    (t0, t1)
}

/// Two left panels times two right panels over the depth of `b0` (= `b1`'s).
#[inline(always)]
fn product_2x2<const FMA: bool>(a0: &[f32], a1: &[f32], b0: &[f32], b1: &[f32]) -> [Tile; 4] {
    let mut t = [[[0f32; NR]; MR]; 4];
    for (((a0, a1), b0), b1) in a0
        .chunks_exact(MR)
        .zip(a1.chunks_exact(MR))
        .zip(b0.chunks_exact(NR))
        .zip(b1.chunks_exact(NR))
    {
        let [t00, t01, t10, t11] = &mut t;
        step::<FMA>(t00, a0, b0);
        step::<FMA>(t01, a0, b1);
        step::<FMA>(t10, a1, b0);
        step::<FMA>(t11, a1, b1);
    }
    t
}

/// [`product2`] over `a`'s columns `ks`.
///
/// # Safety
/// As [`product_of`], for both panels.
#[inline(always)]
unsafe fn product_of2<const FMA: bool>(
    a0: &[f32],
    a1: &[f32],
    ks: &[usize],
    b: &[f32],
) -> (Tile, Tile) {
    let (mut t0, mut t1) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
    for (&kk, b) in ks.iter().zip(b.chunks_exact(NR)) {
        debug_assert!(kk < a0.len() / MR && kk < a1.len() / MR);
        // SAFETY: in bounds by the caller's promise.
        let (a0, a1) = unsafe {
            (
                a0.get_unchecked(kk * MR..(kk + 1) * MR),
                a1.get_unchecked(kk * MR..(kk + 1) * MR),
            )
        };
        step::<FMA>(&mut t0, a0, b);
        step::<FMA>(&mut t1, a1, b);
    }
    (t0, t1)
}

#[cfg(test)]
mod tests;
