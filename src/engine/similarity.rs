//! How alike two maps are: Spearman's rank correlation and SSIM, as the sanity-check
//! literature computes them (Adebayo et al., 2018: scipy's `spearmanr`, scikit-image's
//! `structural_similarity`).

/// Spearman's rank correlation of two equally long sequences: Pearson's correlation of their
/// ranks, ties sharing the mean of their ranks (as scipy.stats.spearmanr). `None` when either
/// sequence is constant (the correlation is undefined).
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "spearman: lengths differ");
    pearson(&ranks(a), &ranks(b))
}

/// Ranks from 1, ties averaged.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Ranks start + 1 ..= end share their mean.
        let mean = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            r[i] = mean;
        }
        start = end;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa * bb).sqrt())
}

/// Mean structural similarity of two `w` x `h` images with values in [0, 1], as
/// `skimage.metrics.structural_similarity(a, b, data_range=1)` computes it: 7 x 7 uniform
/// windows, K1 = 0.01, K2 = 0.03, sample covariances (N / (N - 1)), averaged over the windows
/// that lie wholly inside the image (scikit-image crops 3 pixels from each border).
pub fn ssim(a: &[f32], b: &[f32], w: usize, h: usize) -> f64 {
    assert_eq!(a.len(), w * h, "ssim: size");
    assert_eq!(b.len(), w * h, "ssim: size");
    const WIN: usize = 7;
    if w < WIN || h < WIN {
        return f64::NAN;
    }
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    // Window sums of a, b, a², b², ab via summed-area tables.
    let table = |f: &dyn Fn(usize) -> f64| {
        let mut t = vec![0.0f64; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0.0;
            for x in 0..w {
                row += f(y * w + x);
                t[(y + 1) * (w + 1) + x + 1] = t[y * (w + 1) + x + 1] + row;
            }
        }
        t
    };
    let (fa, fb) = (|i: usize| a[i] as f64, |i: usize| b[i] as f64);
    let sa = table(&fa);
    let sb = table(&fb);
    let saa = table(&|i| fa(i) * fa(i));
    let sbb = table(&|i| fb(i) * fb(i));
    let sab = table(&|i| fa(i) * fb(i));
    let window = |t: &[f64], x: usize, y: usize| {
        let (x1, y1) = (x + WIN, y + WIN);
        t[y1 * (w + 1) + x1] - t[y * (w + 1) + x1] - t[y1 * (w + 1) + x] + t[y * (w + 1) + x]
    };
    let mut total = 0.0;
    let mut count = 0usize;
    for y in 0..=h - WIN {
        for x in 0..=w - WIN {
            let ux = window(&sa, x, y) / np;
            let uy = window(&sb, x, y) / np;
            let vx = cov_norm * (window(&saa, x, y) / np - ux * ux);
            let vy = cov_norm * (window(&sbb, x, y) / np - uy * uy);
            let vxy = cov_norm * (window(&sab, x, y) / np - ux * uy);
            let s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            total += s;
            count += 1;
        }
    }
    total / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_hand_computed_values() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]).statistic = 0.9486832980505138
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((r - 0.948_683_298_050_513_8).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn ssim_is_one_for_equal_images_and_lower_for_others() {
        let a: Vec<f32> = (0..400).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        assert!((ssim(&a, &a, 20, 20) - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!(
            ssim(&a, &b, 20, 20) < 0.0,
            "an inverted image anticorrelates"
        );
        // skimage.metrics.structural_similarity(a, c, data_range=1.0) on float64 copies.
        let c: Vec<f32> = (0..400).map(|i| ((i * 53) % 97) as f32 / 96.0).collect();
        let s = ssim(&a, &c, 20, 20);
        assert!((s - 0.049_269_188_827_419_166).abs() < 1e-6, "{s}");
    }
}
