//! How glibc's allocator treats the worker's large buffers (page bodies, chunks, parts).

/// Largest block glibc keeps on its heap rather than mapping it from the kernel. 32 MiB is
/// the ceiling some glibc versions put on `M_MMAP_THRESHOLD` on 64-bit (half of
/// `HEAP_MAX_SIZE`), refusing the setting above it; the worker's largest buffers (staging
/// parts, 8 MiB by default) are well below.
const KEPT_BLOCK_BYTES: i32 = 32 << 20;

/// Keeps buffers of up to 32 MiB on the heap and freed memory with the process, in one
/// arena; whether glibc took the settings. By default glibc maps each buffer above its threshold (128
/// KiB, raised only as large ones are freed) from the kernel and unmaps it when freed, so
/// page bodies, chunks and staging parts are faulted in and zeroed anew. The cost: freed
/// memory stays with the process until it ends, which the function's memory size allows
/// for (docs/performance.md, fixed memory cost of the overlapped export).
pub fn keep_large_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes two thresholds, under the allocator's own lock.
        // The threshold goes first: setting either one fixes both (glibc stops adjusting
        // them), so a refused threshold would otherwise leave it pinned at 128 KiB.
        let kept = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES) } == 1;
        // One arena: with one per thread (glibc's default, up to 8 per core) each keeps the
        // buffers freed on it, and the peak is their sum (measured: docs/performance.md).
        let one_arena = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } == 1;
        kept && one_arena && unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * KEPT_BLOCK_BYTES) } == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_both_settings() {
        assert!(super::keep_large_buffers(), "mallopt refused a threshold");
    }
}
