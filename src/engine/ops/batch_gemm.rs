//! The GEMM behind every convolution that is not Winograd's: weights (packed once per layer)
//! times each sample's input (1 x 1) or patch matrix, all samples side by side in one product
//! whose columns are split across threads.
//!
//! Why side by side: per sample, the late layers' products are narrow (49 columns at 7 x 7)
//! and re-read their whole weight matrix for a few columns each. Why its own packing: the
//! right operand is packed in runs of 16 columns, and a run whose row is zero is left out of
//! the product. Guided backpropagation's gradients are zero in 30-55 % of such runs (they are
//! spatially clustered) and ReLU outputs in many; a dense GEMM multiplies them all.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::SharedOut;
use super::activation::ReluOp;
use super::packed_gemm::{self, NR, PackedLhs};

/// Where the right operand's values come from: a matrix, or one made on the fly while packing.
pub(crate) trait Rows: Sync {
    fn len(&self) -> usize;
    /// Values `at..at + NR`.
    fn run(&self, at: usize) -> [f32; NR];
    fn at(&self, at: usize) -> f32;
}

impl Rows for [f32] {
    fn len(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn run(&self, at: usize) -> [f32; NR] {
        self[at..at + NR].try_into().unwrap()
    }

    #[inline(always)]
    fn at(&self, at: usize) -> f32 {
        self[at]
    }
}

/// A ReLU's gradient `g` gated on its output `y`, computed as it is packed: a layer whose
/// gated gradient feeds nothing else never writes it out.
pub(crate) struct Gated<'a> {
    pub y: &'a [f32],
    pub g: &'a [f32],
    pub act: ReluOp,
}

impl Rows for Gated<'_> {
    fn len(&self) -> usize {
        self.g.len().min(self.y.len())
    }

    #[inline(always)]
    fn run(&self, at: usize) -> [f32; NR] {
        let y: &[f32; NR] = self.y[at..at + NR].try_into().unwrap();
        let g: &[f32; NR] = self.g[at..at + NR].try_into().unwrap();
        std::array::from_fn(|t| self.act.grad_at(y[t], g[t]))
    }

    #[inline(always)]
    fn at(&self, at: usize) -> f32 {
        self.act.grad_at(self.y[at], self.g[at])
    }
}

/// Columns per task: a packed right block (`KC x NC`, 192 KiB) stays in L2 while the weight
/// panels stream past it.
const NC: usize = 192;
/// Depth per pass.
const KC: usize = 256;

/// `y [batch, m, n] = a [m, k] * x [batch, k, n]`. Every value of `y` is written, then
/// `finish(sample, row, pixel, values)` runs on each run of a row's finished values while
/// they are in cache (bias, residual, activation).
pub(crate) fn product<X: Rows + ?Sized>(
    a: &PackedLhs,
    x: &X,
    (batch, channels, n): (usize, usize, usize),
    y: &mut [MaybeUninit<f32>],
    finish: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) {
    let (m, depth) = (a.m(), a.k());
    assert_eq!(channels, depth);
    assert_eq!(x.len(), batch * channels * n);
    assert_eq!(y.len(), batch * m * n);
    let total = batch * n;
    if total == 0 || m == 0 {
        return;
    }
    if depth == 0 {
        for (sr, row) in super::zeroed(y).chunks_exact_mut(n).enumerate() {
            finish(sr / m, sr % m, 0, row);
        }
        return;
    }
    let out = SharedOut(y.as_mut_ptr().cast::<f32>());
    let panels = total.div_ceil(NR);
    let blocks = task_count(total, rayon::current_num_threads());
    let nc = panels.div_ceil(blocks) * NR;
    let kblocks = depth.div_ceil(KC);
    let kc_len = depth.div_ceil(kblocks);
    (0..blocks).into_par_iter().for_each_init(
        || -> Scratch {
            (
                vec![0f32; kc_len * nc],
                vec![0usize; kc_len * nc / NR],
                vec![0usize; nc / NR],
            )
        },
        |scratch, blk| {
            // Whole panels, spread evenly: blocks differ by one panel at most.
            let j0 = blk * panels / blocks * NR;
            let end = ((blk + 1) * panels / blocks * NR).min(total);
            let block = Block {
                x,
                dims: (m, channels, n),
                cols: (j0, end - j0),
                depth: (kblocks, kc_len),
                out,
            };
            block.run(a, scratch, &finish)
        },
    );
}

/// How many tasks [`product`] splits `total` columns into: blocks of at most `NC` columns, as
/// many as there are threads at least, and a multiple of their number (five equal tasks on two
/// threads take as long as six), but never an empty one.
fn task_count(total: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let panels = total.div_ceil(NR);
    total.div_ceil(NC).next_multiple_of(threads).min(panels)
}

/// One task of [`product`]: all rows of columns `cols.0..cols.0 + cols.1`.
struct Block<'a, X: ?Sized> {
    x: &'a X,
    /// Rows of the product, input rows per sample, columns per sample.
    dims: (usize, usize, usize),
    cols: (usize, usize),
    /// Passes over the depth, and the depth of each but the last.
    depth: (usize, usize),
    out: SharedOut,
}

type Scratch = (Vec<f32>, Vec<usize>, Vec<usize>);

impl<X: Rows + ?Sized> Block<'_, X> {
    fn run(
        &self,
        a: &PackedLhs,
        scratch: &mut Scratch,
        finish: &impl Fn(usize, usize, usize, &mut [f32]),
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx512() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.run_avx512(a, scratch, finish) };
        }
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { self.run_avx2(a, scratch, finish) };
        }
        self.run_any::<{ super::simd::PORTABLE_FMA }, false>(a, scratch, finish)
    }

    /// [`Self::run_avx2`] with the 12-row AVX-512 micro-kernel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn run_avx512(
        &self,
        a: &PackedLhs,
        scratch: &mut Scratch,
        finish: &impl Fn(usize, usize, usize, &mut [f32]),
    ) {
        self.run_any::<true, true>(a, scratch, finish)
    }

    /// Compiled with AVX2 so that the tile stores and the finishing pass ([`BlockSink`]'s
    /// inlined methods, and `finish` if inlined) are too.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(
        &self,
        a: &PackedLhs,
        scratch: &mut Scratch,
        finish: &impl Fn(usize, usize, usize, &mut [f32]),
    ) {
        self.run_any::<true, false>(a, scratch, finish)
    }

    #[inline(always)]
    fn run_any<const FMA: bool, const WIDE: bool>(
        &self,
        a: &PackedLhs,
        (packed, idx, counts): &mut Scratch,
        finish: &impl Fn(usize, usize, usize, &mut [f32]),
    ) {
        let (x, out) = (self.x, self.out);
        let (m, channels, n) = self.dims;
        let (j0, ncols) = self.cols;
        let (kblocks, kc_len) = self.depth;
        let panels = ncols.div_ceil(NR);
        for kb in 0..kblocks {
            let k0 = kb * kc_len;
            let kc = kc_len.min(a.k() - k0);
            let depth = (k0, kc);
            pack(x, (channels, n), depth, (j0, ncols), (packed, idx, counts));
            let (packed, idx, counts) = (&*packed, &*idx, &*counts);
            let panel = |jp: usize| {
                let c = counts[jp];
                (
                    &idx[jp * kc..jp * kc + c],
                    &packed[jp * kc * NR..][..c * NR],
                )
            };
            let mut sink = BlockSink {
                out,
                dims: (m, n),
                cols: self.cols,
                first: kb == 0,
                last: kb + 1 == kblocks,
                finish,
            };
            packed_gemm::tiles::<FMA, WIDE>(a, panels, panel, &mut sink);
        }
    }
}

/// Where one depth pass of a [`Block`] puts its tiles. Methods, not closures: a closure is
/// compiled with the crate's baseline features (SSE2 on x86-64) wherever it is not inlined,
/// and these were not (the tile went out through the stack, 4 lanes per store); an
/// `#[inline(always)]` method lands in the caller's AVX2 / AVX-512 code.
struct BlockSink<'a, F> {
    out: SharedOut,
    /// Rows of the product, columns per sample.
    dims: (usize, usize),
    /// The block's columns, `(first, count)`.
    cols: (usize, usize),
    /// The first pass writes its values, the others add theirs.
    first: bool,
    /// The last pass finishes the rows.
    last: bool,
    finish: &'a F,
}

impl<F: Fn(usize, usize, usize, &mut [f32])> packed_gemm::TileSink for BlockSink<'_, F> {
    #[inline(always)]
    fn tile(&mut self, ir: usize, jp: usize, tile: &packed_gemm::Tile) {
        let ((m, n), (j0, ncols)) = (self.dims, self.cols);
        let jt = j0 + jp * NR;
        let width = NR.min(j0 + ncols - jt);
        let mut t = 0;
        while t < width {
            let (s, p) = ((jt + t) / n, (jt + t) % n);
            let run = (width - t).min(n - p);
            for (i, vals) in tile.iter().enumerate().take(m - ir) {
                let at = self.out.at((s * m + ir + i) * n + p);
                let vals = &vals[t..t + run];
                // SAFETY: in bounds (`p + run <= n`), and the values belong to columns
                // `j0..j0 + ncols`, this task's only.
                unsafe {
                    if self.first {
                        write(at, vals);
                    } else {
                        add(at, vals);
                    }
                }
            }
            t += run;
        }
    }

    /// The block's rows are complete and still in cache: finish them.
    #[inline(always)]
    fn rows_done(&mut self, rows: std::ops::Range<usize>) {
        if !self.last {
            return;
        }
        let ((m, n), (j0, ncols)) = (self.dims, self.cols);
        let mut j = j0;
        while j < j0 + ncols {
            let (s, p) = (j / n, j % n);
            let run = (j0 + ncols - j).min(n - p);
            for r in rows.clone() {
                // SAFETY: written by `tile`; this task's columns only.
                let vals = unsafe {
                    std::slice::from_raw_parts_mut(self.out.at((s * m + r) * n + p), run)
                };
                (self.finish)(s, r, p, vals);
            }
            j += run;
        }
    }
}

/// # Safety
/// `dst..dst + vals.len()` is valid for reads and writes and holds initialised values.
#[inline(always)]
unsafe fn add(dst: *mut f32, vals: &[f32]) {
    for (o, &v) in vals.iter().enumerate() {
        // SAFETY: `o < vals.len()`: inside the range the caller vouches for.
        unsafe { *dst.add(o) += v }
    }
}

/// # Safety
/// `dst..dst + vals.len()` is valid for writes.
#[inline(always)]
unsafe fn write(dst: *mut f32, vals: &[f32]) {
    if let Ok(v) = <&[f32; NR]>::try_from(vals) {
        // SAFETY: `vals` is exactly NR long, so the NR values written are the caller's range;
        // unaligned, as `dst` need not be aligned for `[f32; NR]`.
        unsafe { dst.cast::<[f32; NR]>().write_unaligned(*v) };
        return;
    }
    for (o, &v) in vals.iter().enumerate() {
        // SAFETY: `o < vals.len()`: inside the range the caller vouches for.
        unsafe { dst.add(o).write(v) }
    }
}

/// Packs columns `j0..j0 + ncols` (sample-major: column `j` is pixel `j % n` of sample
/// `j / n`) of rows `k0..k0 + kc` of `x` into panels of `NR` columns (zeros past the end),
/// each panel leaving out the rows that are zero across its columns: panel `jp` holds
/// `counts[jp]` rows at `packed[jp * kc * NR..]`, whose row numbers are `idx[jp * kc..]`.
fn pack<X: Rows + ?Sized>(
    x: &X,
    dims: (usize, usize),
    depth: (usize, usize),
    cols: (usize, usize),
    out: (&mut [f32], &mut [usize], &mut [usize]),
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { pack_avx2(x, dims, depth, cols, out) };
    }
    pack_any(x, dims, depth, cols, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pack_avx2<X: Rows + ?Sized>(
    x: &X,
    dims: (usize, usize),
    depth: (usize, usize),
    cols: (usize, usize),
    out: (&mut [f32], &mut [usize], &mut [usize]),
) {
    pack_any(x, dims, depth, cols, out)
}

#[inline(always)]
fn pack_any<X: Rows + ?Sized>(
    x: &X,
    (channels, n): (usize, usize),
    (k0, kc): (usize, usize),
    (j0, ncols): (usize, usize),
    (packed, idx, counts): (&mut [f32], &mut [usize], &mut [usize]),
) {
    let panels = ncols.div_ceil(NR);
    let counts = &mut counts[..panels];
    counts.fill(0);
    // Where each panel's columns start in sample `s`'s rows, when they are 16 consecutive
    // pixels of one sample (most panels); else `None`, read value by value.
    let starts: Vec<Option<usize>> = (0..panels)
        .map(|jp| {
            let jt = j0 + jp * NR;
            let (s, p) = (jt / n, jt % n);
            (jt + NR <= j0 + ncols && p + NR <= n).then_some(s * channels * n + p)
        })
        .collect();
    // Row by row, so that the reads run along the rows.
    for c in k0..k0 + kc {
        for (jp, (start, count)) in starts.iter().zip(counts.iter_mut()).enumerate() {
            let vals = match start {
                Some(start) => x.run(start + c * n),
                None => {
                    let jt = j0 + jp * NR;
                    let width = NR.min(j0 + ncols - jt);
                    let mut vals = [0f32; NR];
                    for (t, v) in vals.iter_mut().enumerate().take(width) {
                        let j = jt + t;
                        *v = x.at(((j / n) * channels + c) * n + j % n);
                    }
                    vals
                }
            };
            // Bits without the sign: -0.0 is as zero as 0.0; NaN is kept.
            if vals.iter().fold(0u32, |acc, v| acc | (v.to_bits() << 1)) != 0 {
                let at = jp * kc + *count;
                let d: &mut [f32; NR] = (&mut packed[at * NR..][..NR]).try_into().unwrap();
                *d = vals;
                idx[at] = c;
                *count += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y` from [`product`], with `finish` adding `1000 * sample + row + pixel / 1000` to each
    /// value (so a value finished twice, or never, shows).
    fn run(a: &[f32], (m, k): (usize, usize), x: &[f32], (batch, n): (usize, usize)) -> Vec<f32> {
        let packed = PackedLhs::from_rows(a, m, k, (k, 1));
        let mut y = vec![MaybeUninit::new(f32::NAN); batch * m * n];
        let mark = |s: usize, r: usize, p: usize| (1000 * s + r) as f32 + p as f32 / 1000.0;
        product(&packed, x, (batch, k, n), &mut y, |s, r, p, vals| {
            for (t, v) in vals.iter_mut().enumerate() {
                *v += mark(s, r, p + t);
            }
        });
        // SAFETY: filled with NaN above; `product` only overwrites values.
        let y: Vec<f32> = y.into_iter().map(|v| unsafe { v.assume_init() }).collect();
        y.iter()
            .enumerate()
            .map(|(i, v)| v - mark(i / (m * n), (i / n) % m, i % n))
            .collect()
    }

    /// Against a plain triple loop in f64, on inputs full of the zero runs the packing leaves
    /// out (whole rows, aligned and unaligned runs of 16, -0.0): sizes off every block edge,
    /// samples that share a 16-column panel, depths over one pass, more columns than one task.
    #[test]
    fn batch_product_matches_naive_product() {
        let sizes = [
            (1, 1, 1, 1),
            (7, 3, 17, 3),
            (13, 300, 33, 2),
            (64, 600, 5, 4),
            (6, 40, 200, 3),
            (20, 0, 9, 2),
        ];
        for (m, k, n, batch) in sizes {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let mut x: Vec<f32> = (0..batch * k * n)
                .map(|i| ((i * 5) % 19) as f32 / 9.0 - 1.0)
                .collect();
            for (r, row) in x.chunks_mut(n).enumerate() {
                match r % 4 {
                    0 => row.fill(0.0),
                    1 => row.iter_mut().take(16).for_each(|v| *v = -0.0),
                    2 => row.iter_mut().skip(3).take(20).for_each(|v| *v = 0.0),
                    _ => {}
                }
            }
            let y = run(&a, (m, k), &x, (batch, n));
            for s in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|kk| a[i * k + kk] as f64 * x[(s * k + kk) * n + j] as f64)
                            .sum();
                        let got = y[(s * m + i) * n + j] as f64;
                        let at = format!("{m}x{k}x{n} x {batch}: ({s}, {i}, {j})");
                        assert!((got - want).abs() < 1e-3, "{at}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Tasks: as many as the threads at least and a multiple of them where the panels allow,
    /// none wider than `NC`; and the split never changes a value.
    #[test]
    fn tasks_balance_the_threads_and_leave_values_alone() {
        // ResNet-50's 14 x 14 layers, 4 samples: 6 tasks on 2 threads, not 5.
        assert_eq!(task_count(784, 2), 6);
        assert_eq!(task_count(400, 2), 4);
        assert_eq!(task_count(20, 4), 2);
        for total in [1usize, 15, 16, 17, 196, 400, 784, 3136, 12544] {
            for threads in 1..=5 {
                let (panels, tasks) = (total.div_ceil(NR), task_count(total, threads));
                assert!(
                    tasks >= threads.min(panels) && tasks <= panels,
                    "{total} {threads}"
                );
                assert!(tasks == panels || tasks % threads == 0, "{total} {threads}");
                assert!(panels.div_ceil(tasks) * NR <= NC, "{total} {threads}");
            }
        }
        let (m, k, n, batch) = (10, 70, 100, 4);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..batch * k * n)
            .map(|i| ((i * 5) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
            pool.unwrap().install(|| run(&a, (m, k), &x, (batch, n)))
        };
        let one = with(1);
        for threads in [2, 3, 5] {
            let same = with(threads)
                .iter()
                .zip(&one)
                .all(|(u, v)| u.to_bits() == v.to_bits());
            assert!(same, "{threads} threads changed a value");
        }
    }

    /// The zero runs are really left out: a NaN weight meets only zeros (its input row is zero
    /// in every run), so the output stays finite, while the same NaN against one non-zero
    /// value reaches exactly that value's column.
    #[test]
    fn zero_runs_are_skipped_and_nan_inputs_are_not() {
        let (m, k, n) = (6, 3, 40);
        let mut a = vec![1f32; m * k];
        a[k + 1] = f32::NAN; // row 1, column 1
        let mut x = vec![0.5f32; k * n];
        x[n..2 * n].fill(0.0); // input row 1: all zero
        let y = run(&a, (m, k), &x, (1, n));
        assert!(y.iter().all(|v| v.is_finite()), "a zero run was multiplied");
        x[n + 37] = 2.0;
        let y = run(&a, (m, k), &x, (1, n));
        for (i, v) in y.iter().enumerate() {
            // Row 1's columns 32..40 share the panel with the non-zero value; the zero lanes
            // of that panel still meet the NaN (0 x NaN), the other panels do not.
            let hit = i / n == 1 && i % n >= 32;
            assert_eq!(v.is_nan(), hit, "value {i}: {v}");
        }
        x[2 * n + 5] = f32::NAN;
        let y = run(&[1f32; 18], (m, k), &x, (1, n));
        assert!(
            y[5].is_nan() && y[4].is_finite(),
            "a NaN input must reach its column"
        );
    }
}
