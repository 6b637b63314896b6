//! The vectorisable `exp` and `erf` against f64 references over dense sweeps, in both the
//! forms the kernel paths compile (AVX2: fused multiply-adds; portable: separate ones). The
//! fused ops themselves are checked against the tensor-op formulas in the ONNX op tests.

use super::{erf, exp};

/// `erf` in f64 from its all-positive series `2/sqrt(pi) e^{-x^2} sum 2^n x^{2n+1} / (2n+1)!!`
/// (no cancellation), accurate to ~1e-15 for the |x| <= 6 it is used on.
fn erf_f64(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

/// The largest error of `f` over `steps + 1` points of `[lo, hi]`, as `err` measures it from
/// the value and the point, and where; asserts no value is NaN.
fn sweep(
    lo: f64,
    hi: f64,
    steps: usize,
    f: impl Fn(f32) -> f32,
    err: impl Fn(f32, f64) -> f64,
) -> (f64, f32) {
    let mut worst = (0f64, 0f32);
    for i in 0..=steps {
        let x = (lo + (hi - lo) * i as f64 / steps as f64) as f32;
        let got = f(x);
        let e = err(got, x as f64);
        assert!(!got.is_nan(), "NaN at {x}");
        if e > worst.0 {
            worst = (e, x);
        }
    }
    worst
}

fn relative_exp_error(got: f32, x: f64) -> f64 {
    let want = x.exp();
    if want < f32::MIN_POSITIVE as f64 {
        // Subnormal results: what is left of the precision there is absolute.
        return (got as f64 - want).abs() / f32::MIN_POSITIVE as f64 * 1e-7;
    }
    ((got as f64 - want) / want).abs()
}

#[test]
fn exp_is_within_float_rounding_over_the_whole_range() {
    for fma in [false, true] {
        let e = |x: f32| if fma { exp::<true>(x) } else { exp::<false>(x) };
        let (worst, at) = sweep(-100.0, 88.0, 2_000_000, e, relative_exp_error);
        eprintln!("fma {fma}: exp relative error at most {worst:e} (at {at})");
        assert!(
            worst < 1.5e-7,
            "fma {fma}: exp relative error {worst:e} at {at}"
        );
        // Near 0 the reduced argument is tiny: still within rounding.
        let (worst, at) = sweep(-1e-3, 1e-3, 20_000, e, relative_exp_error);
        assert!(
            worst < 2e-7,
            "fma {fma}: exp relative error {worst:e} at {at}"
        );
        assert_eq!(e(0.0), 1.0);
        // Very negative: 0, never NaN; past ln(f32::MAX): infinite.
        for x in [-200.0, -1e30, f32::MIN] {
            assert_eq!(e(x), 0.0, "fma {fma}: exp({x})");
        }
        assert!(e(88.7).is_finite() && e(88.8).is_infinite() && e(1e30).is_infinite());
    }
}

#[test]
fn erf_is_within_2e_7_of_the_true_function() {
    for fma in [false, true] {
        let f = |x: f32| if fma { erf::<true>(x) } else { erf::<false>(x) };
        let abs = |got: f32, x: f64| (got as f64 - erf_f64(x)).abs();
        let (worst, at) = sweep(-10.0, 10.0, 2_000_000, f, abs);
        eprintln!("fma {fma}: erf error at most {worst:e} (at {at})");
        assert!(worst <= 2e-7, "fma {fma}: erf error {worst:e} at {at}");
        // Odd, 0 at 0, and +-1 far out.
        assert_eq!(f(0.0), 0.0);
        assert_eq!(f(-0.37), -f(0.37));
        assert_eq!((f(1e30), f(-1e30)), (1.0, -1.0));
    }
}

#[test]
fn the_series_reference_is_right() {
    // erf(0.5), erf(1), erf(2) to 15 digits (Abramowitz & Stegun, table 7.1).
    for (x, want) in [
        (0.5, 0.520_499_877_813_047),
        (1.0, 0.842_700_792_949_715),
        (2.0, 0.995_322_265_018_953),
    ] {
        assert!(
            (erf_f64(x) - want).abs() < 1e-14,
            "erf({x}) = {}",
            erf_f64(x)
        );
    }
}
