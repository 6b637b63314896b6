//! The inner loop of the depthwise convolution, forward and backward alike: sums of `k x k`
//! taps, each read at its own fixed offset from one buffer,
//! `sum[p] = init + sum over t of w[t] * src[offs[t] + p]`.
//!
//! Consecutive positions go in blocks whose sums stay in registers across all the taps and
//! are handed out once (`emit`), so each tap costs a load and a multiply-add per vector and
//! no store; a tap-outer loop would reload and store the whole plane once per tap. The body
//! is written once and compiled per kernel path (AVX-512: 16 lanes, AVX2 + FMA: 8 lanes,
//! portable: plain Rust the compiler vectorises for whatever the target has); every path
//! sums the taps in the same order, so they differ only by the rounding of fused
//! multiply-adds (the portable path on x86-64 multiplies and adds separately).

/// The widest block of lanes any path reads past `n` (see [`tap_sums`]).
pub(super) const MAX_LANES: usize = 16;

/// Takes each block of sums from [`tap_sums`]. Implementors mark `emit` `#[inline(always)]`:
/// it then compiles into the kernel with the kernel's target features, where a closure not
/// inlined is built for the baseline instruction set (SSE2 on x86-64) and called per block.
pub(super) trait Emit {
    fn emit(&mut self, p: usize, sums: &[f32]);
}

/// Calls `emit.emit(p, sums)` for consecutive runs of positions covering `[0, n)` in order, `sums`
/// holding the values at `p, p + 1, ...`. `src` must hold `max(offs) + n + MAX_LANES` values
/// (the last block reads up to a vector past `n`; what it reads there is dropped).
pub(super) fn tap_sums(
    src: &[f32],
    offs: &[usize],
    w: &[f32],
    init: f32,
    n: usize,
    emit: &mut impl Emit,
) {
    assert_eq!(offs.len(), w.len(), "one weight per tap");
    let reach = offs.iter().max().map_or(0, |&m| m + n + MAX_LANES);
    assert!(
        src.len() >= reach,
        "tap sums: {} values, {reach} read",
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    if super::super::simd::has_avx512() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { sums_avx512(src, offs, w, init, n, emit) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { sums_avx2(src, offs, w, init, n, emit) };
    }
    sums_any::<8, 4, { super::super::simd::PORTABLE_FMA }>(src, offs, w, init, n, emit)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sums_avx512(src: &[f32], offs: &[usize], w: &[f32], init: f32, n: usize, emit: &mut impl Emit) {
    sums_any::<16, 4, true>(src, offs, w, init, n, emit)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sums_avx2(src: &[f32], offs: &[usize], w: &[f32], init: f32, n: usize, emit: &mut impl Emit) {
    sums_any::<8, 4, true>(src, offs, w, init, n, emit)
}

/// Blocks of `R` vectors of `W` lanes, then single vectors for the rest. The caller has
/// checked `src` against the offsets, `n` and `W <= MAX_LANES`.
#[inline(always)]
fn sums_any<const W: usize, const R: usize, const FMA: bool>(
    src: &[f32],
    offs: &[usize],
    w: &[f32],
    init: f32,
    n: usize,
    emit: &mut impl Emit,
) {
    let mut p = 0;
    while p + W * R <= n {
        emit.emit(p, block::<W, R, FMA>(src, offs, w, init, p).as_flattened());
        p += W * R;
    }
    while p < n {
        let sums = block::<W, 1, FMA>(src, offs, w, init, p);
        emit.emit(p, &sums.as_flattened()[..W.min(n - p)]);
        p += W;
    }
}

/// The sums at positions `p .. p + W * R`, kept in registers over all the taps.
#[inline(always)]
fn block<const W: usize, const R: usize, const FMA: bool>(
    src: &[f32],
    offs: &[usize],
    w: &[f32],
    init: f32,
    p: usize,
) -> [[f32; W]; R] {
    let mut acc = [[init; W]; R];
    for (&off, &wt) in offs.iter().zip(w) {
        let (x, _) = src[off + p..][..W * R].as_chunks::<W>();
        for (acc, x) in acc.iter_mut().zip(x) {
            for (a, &x) in acc.iter_mut().zip(x) {
                *a = if FMA { x.mul_add(wt, *a) } else { *a + wt * x };
            }
        }
    }
    acc
}
