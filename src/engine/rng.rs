//! Seeded random numbers that are the same on every platform and every crate version: the
//! SmoothGrad noise and the sanity check's re-initialised weights must not change under a
//! dependency update (scripts/fixtures/make_method_fixtures.py ports this generator to numpy).

/// Standard normal samples from SplitMix64 + Box-Muller: tiny, seeded and identical on every
/// platform (the noise must not depend on a crate's version).
pub(crate) struct Normal {
    state: u64,
    spare: Option<f32>,
}

impl Normal {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Normal {
            state: seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17),
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn sample(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some((r * t.sin()) as f32);
        (r * t.cos()) as f32
    }
}
