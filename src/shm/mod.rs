//! Anonymous shared-memory segments: a `memfd` mapped `MAP_SHARED`.
//!
//! A segment has no name, so nothing can leak in `/dev/shm` when a process is SIGKILLed: the
//! memory is freed when the last descriptor and mapping go. Children inherit the mapping across
//! `fork`; spawned children receive the descriptor and map it again.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::platform;

/// One shared mapping of a memfd.
#[derive(Debug)]
pub struct Segment {
    /// The memfd, unless the segment was mapped for reading only once (a queue's large
    /// message): the mapping does not need it, and keeping it would cost a descriptor per
    /// message kept alive.
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all access through it goes through
// raw pointers and atomics (never `&[u8]`), so it may be used from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above; `Segment` itself has no interior state besides the mapping.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes (`len` > 0).
    pub fn create(len: usize) -> io::Result<Segment> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment size must be > 0",
            ));
        }
        let fd = platform::memfd(c"rmp", len)?;
        Segment::map(fd, len)
    }

    /// Maps an existing memfd of at least `len` bytes (one received from a parent). A file
    /// shorter than `len` is refused: touching the mapping past its end would raise SIGBUS.
    pub fn map(fd: OwnedFd, len: usize) -> io::Result<Segment> {
        Segment::map_with(fd, len, false, true)
    }

    /// As [`Segment::map`]; with `populate`, the pages are mapped up front (one call instead of
    /// a fault per page, for a segment about to be read or written whole); without `keep_fd`,
    /// the descriptor is closed once mapped.
    pub fn map_with(fd: OwnedFd, len: usize, populate: bool, keep_fd: bool) -> io::Result<Segment> {
        let size = rustix::fs::fstat(&fd)?.st_size;
        if len == 0 || u64::try_from(size).unwrap_or(0) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("shared memory file has {size} bytes, {len} needed"),
            ));
        }
        let ptr = if populate {
            platform::mmap_shared_populated(fd.as_fd(), len)?
        } else {
            platform::mmap_shared(fd.as_fd(), len)?
        };
        Ok(Segment {
            fd: keep_fd.then_some(fd),
            ptr,
            len,
        })
    }

    /// The descriptor, for passing to a child (`None` if it was closed once mapped).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: segments are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the mapping. Other processes may write it at any time: use atomics or raw
    /// volatile-free copies under a protocol, never references to plain bytes.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping made in `map`, unmapped exactly once here; no
        // reference into it outlives `self`.
        let _ = unsafe { platform::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_size_is_rejected() {
        assert_eq!(
            Segment::create(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn two_mappings_share_bytes() {
        let a = Segment::create(4096).unwrap();
        let fd2 = a.fd().unwrap().try_clone_to_owned().unwrap();
        let b = Segment::map(fd2, 4096).unwrap();
        // SAFETY: both pointers are valid for 4096 bytes; single-threaded test.
        unsafe {
            a.as_ptr().as_ptr().add(100).write(42);
            assert_eq!(b.as_ptr().as_ptr().add(100).read(), 42);
        }
    }
}
