//! Tunes glibc's allocator for the engine's allocation pattern, once, at start-up.
//!
//! weir allocates batches on one thread (a CPU-pool thread decoding a file or an image) and frees
//! them on another (the task that consumed them), in sizes from a few KiB to tens of MiB. With
//! glibc's defaults that pattern keeps handing pages back to the kernel and faulting fresh ones in
//! (its adaptive mmap threshold and 128 KiB trim threshold), and spreads memory over up to
//! 8 × cores arenas. Measured on the image benchmark (1000 JPEGs, 2 cores): system time 1.1 →
//! 0.7 s, wall 9.3 → 9.0 s, peak RSS 0.85 → 0.70 GiB (see BENCHMARKS.md).
//!
//! The settings only apply when the user has set none of glibc's `MALLOC_ARENA_MAX`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` variables (which glibc reads itself), and
//! `WEIR_MALLOC_DEFAULTS=1` turns them off. Other platforms and allocators are left alone.

/// Arenas: fewer arenas, less memory stranded in arenas of threads that freed it.
pub const ARENA_MAX: i32 = 2;
/// Allocations below this come from the heap, not a fresh mmap (so are reused, not faulted in).
pub const MMAP_THRESHOLD: i32 = 64 << 20;
/// Free memory at the top of the heap kept for reuse instead of returned to the kernel.
pub const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the settings above (see the module comment for when). Call before other threads start.
pub fn tune() {
    let user_set = [
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if user_set || std::env::var("WEIR_MALLOC_DEFAULTS").is_ok_and(|v| v == "1") {
        return;
    }
    apply();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() {
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENA_MAX),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes glibc's allocator parameters; it is called once, from
        // `main`, before any other thread exists. A refused value (return 0) keeps the default.
        let ok = unsafe { libc::mallopt(param, value) };
        if ok == 0 {
            tracing::debug!("mallopt({param}, {value}) was refused; keeping glibc's default");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}
