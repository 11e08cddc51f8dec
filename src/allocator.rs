//! How glibc's allocator treats the worker's large buffers (page bodies, chunks, parts).

/// Keeps buffers of up to 64 MiB on the heap and freed memory with the process. By default
/// glibc maps each buffer above its threshold (128 KiB, raised only as large ones are
/// freed) from the kernel and unmaps it when freed, so every page body, chunk and staging
/// part is faulted in and zeroed anew. Kept, the worker's CPU per 1M-row job fell by about
/// 7 % (`make bench-e2e`). The cost: freed memory stays with the process until it ends,
/// which the function's memory size allows for (README, memory).
pub fn keep_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes two thresholds, under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
