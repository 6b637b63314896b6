//! Allocator settings for the numeric work.
//!
//! A saliency pass allocates and frees hundreds of activation and gradient buffers of 1-40 MB.
//! glibc's defaults serve blocks above a (dynamic, at most 32 MB) threshold with fresh `mmap`s
//! and give freed memory at the top of the heap back to the system, so every pass page-faults
//! its buffers in again: a quarter of the CPU time of a Lite0 pass went to the kernel's page
//! fault handler. Keeping freed memory for reuse cut a Lite0 sample from 121 to 93 ms and the
//! end-to-end run from 23 to 11 s, while the peak memory stayed under 0.5 GiB (BENCHMARKS.md).

/// Makes the process allocator keep and reuse large freed blocks. Process-wide: call once,
/// early, from a binary (the app, the CLI, the benchmark). A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        // Blocks up to 32 MB (glibc's maximum threshold) come from the heap, not fresh mmaps.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Give memory back to the system only when 1 GiB sits free at the top of the heap.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        // Grow the heap in 64 MB steps rather than page by page.
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // One heap for all threads: the buffers are freed by whichever rayon worker finishes
        // with them, and per-thread arenas would each keep their own freed memory (the peak
        // of a run nearly doubled). A few hundred large allocations per pass never contend.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
