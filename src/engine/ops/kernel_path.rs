//! Which code path the CPU kernels take: the portable one (plain Rust, what an ARM or any
//! other CPU runs), the one compiled for AVX2 + FMA, or that one with AVX-512 GEMM
//! micro-kernels (every other kernel takes its AVX2 code there).
//!
//! By default the kernels use the widest path the CPU has (checked once at run time).
//! `UNVEIL_KERNELS` overrides that for the whole process, so that the portable path, which
//! an x86 machine never takes on its own, can be tested and measured there:
//!
//! - `auto` (or unset, or empty): the fastest path this CPU has;
//! - `portable`: the portable path on every CPU;
//! - `avx2`: AVX2 + FMA, and an error where the CPU lacks them (never a silent fallback);
//! - `avx512`: AVX-512F on top of AVX2 + FMA, the same way.
//!
//! The variable is read once, on first use. An unknown value or an unavailable path is an
//! error: the binary reports it (one line, exit 1) before doing anything, through
//! [`from_env`]; library code that reaches a kernel with such a value panics with the same
//! line rather than guess.
//!
//! [`with_path`] runs a closure on a given path regardless of the variable (a test comparing
//! the paths in one process). What must hold: every path computes the same function; only
//! float rounding may differ (the portable path on x86-64 multiplies and adds separately,
//! the others fuse them), and the data layouts never depend on the path, so values packed
//! on one path are read correctly on another.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable that picks the path for the whole process.
pub const ENV_VAR: &str = "UNVEIL_KERNELS";

/// One code path of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Plain Rust, no instruction-set extension asked for: what every CPU can run.
    Portable,
    /// Compiled for AVX2 + FMA (x86-64 only).
    Avx2,
    /// AVX2 + FMA, with the GEMM micro-kernels compiled for AVX-512F (x86-64 only).
    Avx512,
}

impl KernelPath {
    /// Every path, fastest last.
    pub const ALL: [KernelPath; 3] = [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512];

    /// The value of [`ENV_VAR`] that selects this path.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
        }
    }

    /// True when this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Portable => true,
            KernelPath::Avx2 => cpu_has_avx2_fma(),
            KernelPath::Avx512 => cpu_has_avx2_fma() && cpu_has_avx512(),
        }
    }

    /// The fastest path this CPU can run.
    pub fn best() -> KernelPath {
        if KernelPath::Avx512.is_available() {
            KernelPath::Avx512
        } else if cpu_has_avx2_fma() {
            KernelPath::Avx2
        } else {
            KernelPath::Portable
        }
    }

    /// This path, or an error saying why this CPU cannot run it.
    pub fn checked(self) -> Result<KernelPath> {
        if self.is_available() {
            return Ok(self);
        }
        let why = if !cfg!(target_arch = "x86_64") {
            "it exists on x86-64 only"
        } else if self == KernelPath::Avx512 {
            "this CPU lacks AVX-512F, AVX2 or FMA"
        } else {
            "this CPU lacks AVX2 or FMA"
        };
        Err(Error::Device(format!(
            "the {} kernels cannot run here: {why} (use {ENV_VAR}=auto or portable)",
            self.name()
        )))
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path a value of [`ENV_VAR`] asks for (`auto`, empty: the fastest this CPU has), or an
/// error naming the value and the accepted ones, or saying why the CPU cannot run it.
pub fn parse(value: &str) -> Result<KernelPath> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(KernelPath::best()),
        "portable" => KernelPath::Portable.checked(),
        "avx2" => KernelPath::Avx2.checked(),
        "avx512" => KernelPath::Avx512.checked(),
        _ => Err(Error::Device(format!(
            "{ENV_VAR}={value:?} is not a kernel path: use auto, portable, avx2 or avx512"
        ))),
    }
}

/// The process-wide path: [`ENV_VAR`] read once, else the fastest this CPU has. The binary
/// calls this first so that a bad value is one clear error, not a panic in a kernel.
pub fn from_env() -> Result<KernelPath> {
    static CHOSEN: OnceLock<std::result::Result<KernelPath, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| match std::env::var(ENV_VAR) {
            Ok(v) => parse(&v).map_err(|e| e.to_string()),
            Err(std::env::VarError::NotPresent) => Ok(KernelPath::best()),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!(
                "{ENV_VAR}={v:?} is not a kernel path: use auto, portable, avx2 or avx512"
            )),
        })
        .clone()
        .map_err(Error::Device)
}

thread_local! {
    /// Set on the threads of a [`with_path`] pool: their path, whatever the process's is.
    static FORCED: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

/// The path the kernels take on this thread: the [`with_path`] pool's, else the process's.
///
/// # Panics
/// When [`ENV_VAR`] holds an unknown value or a path this CPU lacks (the binary has refused
/// to start with it already, so only a library user or a test gets here).
pub fn current() -> KernelPath {
    FORCED
        .with(Cell::get)
        .unwrap_or_else(|| from_env().unwrap_or_else(|e| panic!("{e}")))
}

/// Runs `f` with every CPU kernel it calls, on any thread of its rayon work, taking `path`;
/// an error where the CPU cannot run `path`. `f` runs in a rayon pool kept for that path
/// (as many threads as the global pool), whose threads are marked with it.
pub fn with_path<R: Send>(path: KernelPath, f: impl FnOnce() -> R + Send) -> Result<R> {
    type Pool = OnceLock<std::result::Result<rayon::ThreadPool, String>>;
    static POOLS: [Pool; KernelPath::ALL.len()] = [const { Pool::new() }; KernelPath::ALL.len()];
    let path = path.checked()?;
    let slot = KernelPath::ALL.iter().position(|&p| p == path).unwrap_or(0);
    let pool = POOLS[slot]
        .get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads())
                .thread_name(move |i| format!("unveil-{path}-{i}"))
                .start_handler(move |_| FORCED.with(|c| c.set(Some(path))))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Internal(format!("cannot start the {path} kernel threads: {e}")))?;
    Ok(pool.install(f))
}

/// True when the CPU has AVX-512F (detected once).
fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when the CPU has AVX2 and FMA (detected once).
fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_to_paths_and_unknown_ones_are_refused() {
        assert_eq!(parse("portable").unwrap(), KernelPath::Portable);
        assert_eq!(parse(" Portable ").unwrap(), KernelPath::Portable);
        for auto in ["", "auto", "AUTO"] {
            assert_eq!(parse(auto).unwrap(), KernelPath::best());
        }
        let e = parse("avx1024").unwrap_err().to_string();
        assert_eq!(
            e,
            "UNVEIL_KERNELS=\"avx1024\" is not a kernel path: use auto, \
             portable, avx2 or avx512"
        );
        match parse("avx2") {
            Ok(p) => assert!(cpu_has_avx2_fma() && p == KernelPath::Avx2),
            Err(e) => {
                assert!(!cpu_has_avx2_fma());
                assert!(
                    e.to_string().contains("the avx2 kernels cannot run here"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_forced_path_reaches_every_thread_of_its_pool() {
        use rayon::prelude::*;
        for path in KernelPath::ALL {
            match with_path(path, || {
                (0..64)
                    .into_par_iter()
                    .map(|_| current())
                    .collect::<Vec<_>>()
            }) {
                Ok(seen) => assert!(seen.iter().all(|&p| p == path), "{path}: {seen:?}"),
                Err(e) => assert!(!path.is_available(), "{path}: {e}"),
            }
        }
        // Outside the pool, the process's path again.
        assert_eq!(current(), from_env().unwrap());
    }
}
