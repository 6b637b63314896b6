//! The packed GEMM against a naive product, on every kernel path.

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
            for path in super::super::kernel_path::KernelPath::ALL {
                let mut other = vec![f32::NAN; m * ldc];
                let on = super::super::kernel_path::with_path(path, || {
                    gemm(&a, ks, &b, n, &mut other, ldc)
                });
                if on.is_ok() {
                    let d = c
                        .iter()
                        .zip(&other)
                        .map(|(x, y)| x - y)
                        .fold(0f32, |s, v| if v.is_nan() { s } else { s.max(v.abs()) });
                    assert!(d < 1e-4, "{path}: {m}x{k}x{n} differs by {d}");
                    assert_eq!(
                        c.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                        other.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                        "{path}: wrote other elements"
                    );
                }
            }
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
