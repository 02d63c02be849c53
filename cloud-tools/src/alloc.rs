//! Process-wide allocator setting for training. Training allocates and
//! frees the same few large tensors (megabytes each) every step. glibc
//! serves such blocks with `mmap` and unmaps them on free, so every step
//! faults every page in again (a third of a MobileNetV2 branch's step time
//! went to page faults and the kernel's memory bookkeeping). Raising the
//! mmap threshold to its maximum and the trim threshold with it keeps freed
//! blocks in the heap for reuse; peak memory is unchanged, it is just not
//! returned to the system while the process runs.

/// Keep large freed blocks for reuse (glibc on Linux; elsewhere nothing).
/// Call once at the start of a process that trains.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
        const MMAP_MAX: i32 = 32 << 20;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator parameters; both values
        // are within glibc's documented ranges. A refusal (0) leaves the
        // defaults, which are correct, only slower.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_MAX);
            mallopt(M_TRIM_THRESHOLD, 4 * MMAP_MAX);
        }
    }
}
