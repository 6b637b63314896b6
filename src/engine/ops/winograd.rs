//! 3 x 3, stride 1, padding 1 convolutions by Winograd's minimal filtering F(4 x 4, 3 x 3)
//! (Lavin & Gray 2016): each 6 x 6 input tile and 3 x 3 kernel are transformed, multiplied
//! element by element (36 matrix products over the channels) and transformed back into a
//! 4 x 4 output tile: 36 multiplications per 16 outputs instead of 144.
//!
//! Why: these layers are 37 % of ResNet-50's arithmetic, forward and backward (the input
//! gradient of such a convolution is one too, with the kernel turned and the channels
//! swapped), and the GEMMs run near this CPU's peak already; doing less arithmetic is what is
//! left. Exact in exact arithmetic; in f32 the transforms add rounding of about 1e-6 relative
//! to the outputs' scale (tested against the direct convolution).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::SharedOut;
use super::packed_gemm::{self, MR, NR, PackedLhs};

/// Values per transformed tile (6 x 6).
const E: usize = 36;

/// `G g` for a kernel column `g`: F(4, 3)'s kernel transform.
fn g6([a, b, c]: [f64; 3]) -> [f64; 6] {
    [
        a / 4.0,
        -(a + b + c) / 6.0,
        -(a - b + c) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// `B^T`: the input transform (a 6 x 6 tile `d` becomes `B^T d B`).
const BT: [[f32; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// `A^T`: the output transform (a transformed tile `m` becomes the 4 x 4 outputs `A^T m A`).
const AT: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `dst = sum of coef[i] * src[i]`, element by element (vectorises: the transforms run on
/// whole rows of tiles at once).
#[inline(always)]
fn combine(dst: &mut [f32], src: [&[f32]; 6], coef: &[f32; 6]) {
    dst.fill(0.0);
    for (src, &c) in src.iter().zip(coef) {
        if c != 0.0 {
            let src = &src[..dst.len()];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += c * s);
        }
    }
}

/// `G g G^T` of a row-major 3 x 3 kernel, row-major 6 x 6.
fn transform_kernel(g: &[f32; 9]) -> [f32; E] {
    let g = g.map(f64::from);
    let cols: [[f64; 6]; 3] = std::array::from_fn(|kx| g6([g[kx], g[3 + kx], g[6 + kx]]));
    let mut u = [0f32; E];
    for xi in 0..6 {
        let row = g6([cols[0][xi], cols[1][xi], cols[2][xi]]);
        for (nu, v) in row.iter().enumerate() {
            u[xi * 6 + nu] = *v as f32;
        }
    }
    u
}

/// A layer's kernels transformed and packed: for each of the 36 tile positions, the matrix
/// `[out channels, in channels]` of that position's values. Made once per model and layer.
pub(crate) struct WinogradWeights {
    u: Vec<PackedLhs>,
    rows: usize,
}

impl WinogradWeights {
    /// For the convolution with weights `w` `[cout, cin, 3, 3]`.
    pub(crate) fn forward(w: &[f32], cout: usize, cin: usize) -> Self {
        Self::transform(cout, cin, |o, i| {
            w[(o * cin + i) * 9..][..9].try_into().unwrap()
        })
    }

    /// For its input gradient: the adjoint of a padding-1 3 x 3 convolution is one too, with
    /// each kernel turned by 180 degrees and the channel roles swapped.
    pub(crate) fn input_gradient(w: &[f32], cout: usize, cin: usize) -> Self {
        Self::transform(cin, cout, |i, o| {
            std::array::from_fn(|t| w[(o * cin + i) * 9 + 8 - t])
        })
    }

    fn transform(rows: usize, k: usize, kernel: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Self {
        // Each transformed kernel is written straight into its place in the 36 packed
        // matrices, in parallel over row panels (which no two tasks share).
        let mut u: Vec<PackedLhs> = (0..E).map(|_| PackedLhs::zeroed(rows, k)).collect();
        let mut by_panel: Vec<Vec<&mut [f32]>> = Vec::new();
        for m in &mut u {
            for (p, panel) in m.panels_mut().enumerate() {
                if by_panel.len() <= p {
                    by_panel.push(Vec::with_capacity(E));
                }
                by_panel[p].push(panel);
            }
        }
        by_panel.par_iter_mut().enumerate().for_each(|(p, panels)| {
            for i in 0..MR.min(rows - p * MR) {
                for kk in 0..k {
                    let t = transform_kernel(&kernel(p * MR + i, kk));
                    for (panel, v) in panels.iter_mut().zip(t) {
                        panel[kk * MR + i] = v;
                    }
                }
            }
        });
        WinogradWeights { u, rows }
    }

    /// Input channels.
    pub(crate) fn k(&self) -> usize {
        self.u[0].k()
    }
}

/// `y [batch, rows, h, w]` = the padding-1 3 x 3 convolution of `x [batch, cin, h, w]` with
/// `weights`, reading only the input channels `channels` (the others must be zero: they are
/// skipped, not read). Every value of `y` is written; then `finish(sample, channel, plane)`
/// runs on each output plane while it is still in cache (bias, activation, ...).
pub(crate) fn conv3x3(
    weights: &WinogradWeights,
    x: &[f32],
    (batch, cin, h, w): (usize, usize, usize, usize),
    channels: Option<&[usize]>,
    y: &mut [MaybeUninit<f32>],
    finish: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    assert_eq!(cin, weights.k());
    assert_eq!(x.len(), batch * cin * h * w);
    assert_eq!(y.len(), batch * weights.rows * h * w);
    let all: Vec<usize>;
    let ks = match channels {
        Some(ks) => ks,
        None => {
            all = (0..cin).collect();
            &all
        }
    };
    let (k, rows) = (ks.len(), weights.rows);
    if k == 0 || y.is_empty() {
        // No live input channel: the convolution is zero.
        y.fill(MaybeUninit::new(0.0));
        // SAFETY: just written.
        let y = unsafe { super::assume_init(y) };
        for (sr, plane) in y.chunks_exact_mut(h * w).enumerate() {
            finish(sr / rows, sr % rows, plane);
        }
        return;
    }
    let (th, tw) = (h.div_ceil(4), w.div_ceil(4));
    let tiles = th * tw;
    let n = batch * tiles;

    // Transformed inputs, packed as the GEMM's right operands (zero past `n`).
    let per_e = packed_gemm::rhs_len(k, n);
    let geo = Tiling {
        batch,
        w,
        tw,
        tiles,
    };
    let transform_inputs = |v: &mut [MaybeUninit<f32>]| {
        let out = SharedOut(v.as_mut_ptr().cast::<f32>());
        let init = || (vec![0f32; geo.padded_len()], vec![0f32; (2 * E + 6) * n]);
        (0..k)
            .into_par_iter()
            .for_each_init(init, |(padded, work), kk| {
                let (d, rest) = work.split_at_mut(E * n);
                let (vt, tmp) = rest.split_at_mut(E * n);
                for s in 0..batch {
                    let plane = &x[(s * cin + ks[kk]) * h * w..][..h * w];
                    geo.gather_tiles(plane, padded, d, s);
                }
                input_transform(d, vt, tmp, n);
                for (e, vals) in vt.chunks_exact(n).enumerate() {
                    for (p, run) in vals.chunks(NR).enumerate() {
                        let i = e * per_e + packed_gemm::rhs_index(k, kk, p * NR);
                        // SAFETY: `i + NR <= 36 * per_e` (one panel row). Tasks differ in
                        // `kk`, and `rhs_index` maps distinct `(kk, column)` pairs to distinct
                        // indices: no two tasks write one index. Lanes past `n` get zeros.
                        unsafe {
                            out.write(i, run);
                            out.write(i + run.len(), &[0.0; NR][run.len()..]);
                        }
                    }
                }
            });
    };
    // SAFETY: every panel row of every operand is written above (`n.div_ceil(NR)` panels of
    // `k` rows each).
    let v = unsafe { super::vec_written_by(E * per_e, transform_inputs) };

    // The 36 products `[rows, k] x [k, n]`, written whole.
    let fill = |m: &mut [MaybeUninit<f32>]| {
        m.par_chunks_mut(rows * n)
            .zip(v.par_chunks(per_e))
            .zip(weights.u.par_iter())
            .for_each(|((m, v), u)| {
                // SAFETY: `gemm` writes the `rows x n` values before anything reads them.
                let m = unsafe { super::assume_init(m) };
                packed_gemm::gemm(u, channels, v, n, m, n)
            })
    };
    // SAFETY: every chunk is written by `gemm` above.
    let m = unsafe { super::vec_written_by(E * rows * n, fill) };
    drop(v);

    let y = SharedOut(y.as_mut_ptr().cast::<f32>());
    let init = || vec![0f32; (24 + 16) * n];
    (0..rows).into_par_iter().for_each_init(init, |work, r| {
        let (down, tiles_out) = work.split_at_mut(24 * n);
        output_transform((&m, r * n, rows * n), down, tiles_out, n);
        for s in 0..batch {
            // SAFETY: in bounds; only this task touches channel `r`.
            let plane = unsafe { y.plane(((s * rows + r) * h * w, h * w)) };
            finish(s, r, geo.scatter_plane(tiles_out, s, plane));
        }
    });
}

/// Where the tiles of a batch are: tile `j` is sample `j / tiles`, tile row `j % tiles / tw`,
/// tile column `j % tw`; tiles start every 4 pixels, one pixel up and left of the output.
#[derive(Clone, Copy)]
struct Tiling {
    batch: usize,
    w: usize,
    tw: usize,
    tiles: usize,
}

impl Tiling {
    /// Width of a plane padded on every side to cover every tile.
    fn padded_w(&self) -> usize {
        4 * self.tw + 2
    }

    fn padded_len(&self) -> usize {
        (4 * (self.tiles / self.tw) + 2) * self.padded_w()
    }

    /// `d[r * 6 + q][j]` = input value `(r, q)` of tile `j` of sample `s`, for every tile of
    /// `plane` (columns `s * tiles..`, `d` being `[36, n]`). `padded` (`padded_len` values)
    /// must be zero outside the image's place in it: only that part is written, so a buffer
    /// that starts zeroed can serve every plane of one size.
    fn gather_tiles(&self, plane: &[f32], padded: &mut [f32], d: &mut [f32], s: usize) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.gather_tiles_avx2(plane, padded, d, s) };
        }
        self.gather_tiles_any(plane, padded, d, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn gather_tiles_avx2(&self, plane: &[f32], padded: &mut [f32], d: &mut [f32], s: usize) {
        self.gather_tiles_any(plane, padded, d, s)
    }

    #[inline(always)]
    fn gather_tiles_any(&self, plane: &[f32], padded: &mut [f32], d: &mut [f32], s: usize) {
        let (pw, th) = (self.padded_w(), self.tiles / self.tw);
        let n = self.batch * self.tiles;
        for (iy, row) in plane.chunks_exact(self.w).enumerate() {
            padded[(iy + 1) * pw + 1..][..self.w].copy_from_slice(row);
        }
        for (rq, d) in d.chunks_exact_mut(n).enumerate() {
            let (r, q) = (rq / 6, rq % 6);
            let d = &mut d[s * self.tiles..(s + 1) * self.tiles];
            for (ty, d) in d.chunks_exact_mut(self.tw).enumerate().take(th) {
                let src = &padded[(4 * ty + r) * pw + q..][..4 * (self.tw - 1) + 1];
                for (d, src) in d.iter_mut().zip(src.iter().step_by(4)) {
                    *d = *src;
                }
            }
        }
    }

    /// Writes output plane `plane` (`h x w`, sample `s`) whole from the tiles' outputs
    /// `o[a * 4 + b][j]`, dropping the parts of edge tiles outside the image.
    fn scatter_plane<'a>(
        &self,
        o: &[f32],
        s: usize,
        plane: &'a mut [MaybeUninit<f32>],
    ) -> &'a mut [f32] {
        self.interleave_plane(o, s, plane);
        // SAFETY: every row is written whole (`w / 4` tiles and the tail).
        unsafe { super::assume_init(plane) }
    }

    fn interleave_plane(&self, o: &[f32], s: usize, plane: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.interleave_plane_avx2(o, s, plane) };
        }
        self.interleave_plane_any(o, s, plane)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn interleave_plane_avx2(&self, o: &[f32], s: usize, plane: &mut [MaybeUninit<f32>]) {
        self.interleave_plane_any(o, s, plane)
    }

    #[inline(always)]
    fn interleave_plane_any(&self, o: &[f32], s: usize, plane: &mut [MaybeUninit<f32>]) {
        let n = self.batch * self.tiles;
        let (w, tw, full) = (self.w, self.tw, self.w / 4);
        for (oy, row) in plane.chunks_exact_mut(w).enumerate() {
            let (ty, a) = (oy / 4, oy % 4);
            let j0 = s * self.tiles + ty * tw;
            let src: [&[f32]; 4] = std::array::from_fn(|b| &o[(a * 4 + b) * n + j0..][..tw]);
            // Four outputs per tile, interleaved (vectorises as an interleaved store).
            let (body, tail) = row.split_at_mut(4 * full);
            for (t, d) in body.chunks_exact_mut(4).enumerate() {
                for (d, src) in d.iter_mut().zip(&src) {
                    d.write(src[t]);
                }
            }
            for (d, src) in tail.iter_mut().zip(&src) {
                d.write(src[full]);
            }
        }
    }
}

/// `v = B^T d B` for every tile: `d` and `v` are `[36, n]` (tile values by tile), `tmp`
/// `[6, n]` scratch.
fn input_transform(d: &[f32], v: &mut [f32], tmp: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { input_transform_avx2(d, v, tmp, n) };
    }
    input_transform_any(d, v, tmp, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn input_transform_avx2(d: &[f32], v: &mut [f32], tmp: &mut [f32], n: usize) {
    input_transform_any(d, v, tmp, n)
}

#[inline(always)]
fn input_transform_any(d: &[f32], v: &mut [f32], tmp: &mut [f32], n: usize) {
    for (xi, bt) in BT.iter().enumerate() {
        // tmp[q] = sum over r of BT[xi][r] d[r][q].
        for (q, dst) in tmp.chunks_exact_mut(n).enumerate() {
            combine(dst, std::array::from_fn(|r| &d[(r * 6 + q) * n..][..n]), bt);
        }
        for (nu, bt) in BT.iter().enumerate() {
            let src = std::array::from_fn(|q| &tmp[q * n..][..n]);
            combine(&mut v[(xi * 6 + nu) * n..][..n], src, bt);
        }
    }
}

/// `o = A^T m A` for every tile: value `e` of tile `j` is `m[base + e * stride + j]`; `o` is
/// `[16, n]` (output `(a, b)` by tile) and `down` `[24, n]` scratch.
fn output_transform(
    (m, base, stride): (&[f32], usize, usize),
    down: &mut [f32],
    o: &mut [f32],
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { output_transform_avx2((m, base, stride), down, o, n) };
    }
    output_transform_any((m, base, stride), down, o, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn output_transform_avx2(
    (m, base, stride): (&[f32], usize, usize),
    down: &mut [f32],
    o: &mut [f32],
    n: usize,
) {
    output_transform_any((m, base, stride), down, o, n)
}

#[inline(always)]
fn output_transform_any(
    (m, base, stride): (&[f32], usize, usize),
    down: &mut [f32],
    o: &mut [f32],
    n: usize,
) {
    for (a, at) in AT.iter().enumerate() {
        for nu in 0..6 {
            let src = std::array::from_fn(|xi| &m[base + (xi * 6 + nu) * stride..][..n]);
            combine(&mut down[(a * 6 + nu) * n..][..n], src, at);
        }
    }
    for a in 0..4 {
        let src = std::array::from_fn(|nu| &down[(a * 6 + nu) * n..][..n]);
        for (b, at) in AT.iter().enumerate() {
            combine(&mut o[(a * 4 + b) * n..][..n], src, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct padding-1 correlation, in f64.
    fn direct(
        x: &[f32],
        wt: &[f32],
        (b, cin, h, w): (usize, usize, usize, usize),
        cout: usize,
    ) -> Vec<f64> {
        let mut y = vec![0f64; b * cout * h * w];
        for s in 0..b {
            for o in 0..cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = 0f64;
                        for i in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((oy + ky).wrapping_sub(1), (ox + kx).wrapping_sub(1));
                                    if iy < h && ix < w {
                                        acc += x[((s * cin + i) * h + iy) * w + ix] as f64
                                            * wt[((o * cin + i) * 3 + ky) * 3 + kx] as f64;
                                    }
                                }
                            }
                        }
                        y[((s * cout + o) * h + oy) * w + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn run(
        weights: &WinogradWeights,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        rows: usize,
        ch: Option<&[usize]>,
    ) -> Vec<f32> {
        let (b, _, h, w) = dims;
        let mut y = vec![MaybeUninit::new(f32::NAN); b * rows * h * w];
        conv3x3(weights, x, dims, ch, &mut y, |_, _, _| {});
        // SAFETY: filled with NaN above; `conv3x3` only overwrites values.
        y.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    /// Sizes that are and are not multiples of the 4 x 4 tile, one pixel wide included,
    /// against the direct convolution; the input-gradient weights against the adjoint
    /// identity <conv(x), g> = <x, conv^T(g)>; skipped channels against zeroed ones.
    #[test]
    fn winograd_matches_direct_convolution_and_its_adjoint() {
        for (b, cin, cout, h, w) in [
            (1, 1, 1, 1, 1),
            (2, 3, 5, 7, 9),
            (1, 8, 4, 14, 14),
            (3, 5, 7, 4, 13),
        ] {
            let dims = (b, cin, h, w);
            let x = values(b * cin * h * w, 1);
            let wt = values(cout * cin * 9, 2);
            let y = run(
                &WinogradWeights::forward(&wt, cout, cin),
                &x,
                dims,
                cout,
                None,
            );
            let want = direct(&x, &wt, dims, cout);
            let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
            for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - e).abs() < 2e-5 * scale,
                    "{dims:?} -> {cout} at {i}: {g} vs {e}"
                );
            }

            let g = values(b * cout * h * w, 3);
            let gx = run(
                &WinogradWeights::input_gradient(&wt, cout, cin),
                &g,
                (b, cout, h, w),
                cin,
                None,
            );
            let lhs: f64 = want.iter().zip(&g).map(|(y, g)| y * *g as f64).sum();
            let rhs: f64 = x.iter().zip(&gx).map(|(x, g)| *x as f64 * *g as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "adjoint {lhs} vs {rhs}"
            );

            if cin > 2 {
                let live = [0, cin - 1];
                let mut xz = x.clone();
                for (i, v) in xz.iter_mut().enumerate() {
                    if !live.contains(&((i / (h * w)) % cin)) {
                        *v = 0.0;
                    }
                }
                let weights = WinogradWeights::forward(&wt, cout, cin);
                let skipped = run(&weights, &xz, dims, cout, Some(&live));
                let zeroed = run(&weights, &xz, dims, cout, None);
                for (a, z) in skipped.iter().zip(&zeroed) {
                    assert!((a - z).abs() <= 1e-5 * z.abs().max(1.0), "{a} vs {z}");
                }
            }
        }
    }
}
