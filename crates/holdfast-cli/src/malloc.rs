//! Allocator tuning for the `holdfast` process: keep large freed blocks
//! instead of handing them back to the kernel after every frame.
//!
//! Every large frame (a 1 MiB write or read) arrives in a buffer of its own,
//! because the previous frame's payload is still alive: the target caches
//! each response until the initiator acknowledges it, and the service or
//! the caller holds the payload it was given. With glibc's defaults such a
//! block is either `mmap`ed and `munmap`ed per frame, or trimmed off the top
//! of the heap when freed, so each new frame faults in and zeroes 256 fresh
//! pages. `perf` on `examples/echo_load` at 1 MiB, QD 1 put page faults at
//! 21% of the process's CPU; with the settings below the same run went from
//! 890-960 to 1,330-1,570 calls/s (and the baseline it is compared with in
//! `holdfast bench overhead` reuses one buffer, so never paid this).
//!
//! The cost is resident memory that is kept rather than returned: up to
//! `TRIM_THRESHOLD` (32 MiB) of free space at the top of each malloc arena. Idle
//! sessions never grow it (their buffers are small), which `holdfast bench
//! scale` checks.
//!
//! Only glibc has `mallopt`; elsewhere this does nothing. A program that
//! embeds the `holdfast` library chooses its own allocator settings.

/// Blocks up to this size come from the heap, not from their own mapping
/// (glibc's default starts at 128 KiB and only rises once one is freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 16 << 20;

/// Free space at the top of an arena beyond this much is given back to the
/// kernel (glibc's default: 128 KiB, or twice the mmap threshold once it
/// has risen).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 32 << 20;

/// Applies the settings above; call once, before the runtime starts any
/// thread. Failures are ignored: the process works the same, only slower
/// with large frames.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn keep_large_blocks() {
    // SAFETY: `mallopt` only changes glibc's allocator parameters; it is
    // called with valid parameter numbers and values before any other
    // thread exists, and it takes glibc's arena lock itself.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Applies nothing: only glibc has `mallopt`.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn keep_large_blocks() {}
