//! A queue's shared parts in one value: the ring's segment, the side socket that carries
//! messages too large for the ring, and (for a `SimpleQueue`) the readiness eventfd. Every
//! process holding the queue has its own `Channel` over the same kernel objects.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::{segment_size, Links, Ring};
use crate::platform;
use crate::shm::Segment;

/// A ring with its side channels.
pub struct Channel {
    seg: Arc<Segment>,
    ring: Ring,
    send: OwnedFd,
    recv: OwnedFd,
    evfd: Option<OwnedFd>,
}

impl Channel {
    /// A new ring of `capacity` data bytes holding at most `max_items` messages; with
    /// `eventfd`, a readiness eventfd too.
    pub fn create(capacity: u32, max_items: u32, eventfd: bool) -> io::Result<Channel> {
        if !capacity.is_power_of_two() || capacity < 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue capacity must be a power of two >= 64, not {capacity}"),
            ));
        }
        let seg = Arc::new(Segment::create(segment_size(capacity as usize))?);
        // SAFETY: the segment is large enough for the ring, page-aligned, and `seg` (kept in
        // the channel beside the view) outlives it.
        let ring = unsafe { Ring::from_raw(seg.as_ptr()) };
        ring.init(capacity, max_items)?;
        let (send, recv) = platform::seqpacket_pair()?;
        let evfd = if eventfd {
            Some(platform::semaphore_eventfd()?)
        } else {
            None
        };
        Ok(Channel {
            seg,
            ring,
            send,
            recv,
            evfd,
        })
    }

    /// The channel whose descriptors a parent passed: the ring's memfd (holding a ring of
    /// `capacity` bytes), the side socket's two ends and the eventfd if any.
    pub fn open(
        seg_fd: OwnedFd,
        capacity: u32,
        send: OwnedFd,
        recv: OwnedFd,
        evfd: Option<OwnedFd>,
    ) -> io::Result<Channel> {
        let seg = Arc::new(Segment::map(seg_fd, segment_size(capacity as usize))?);
        // SAFETY: `map` checked the file holds the whole ring; `seg` outlives the view.
        let ring = unsafe { Ring::from_raw(seg.as_ptr()) };
        if !ring.check() || ring.capacity() != capacity as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the descriptor holds no rmp queue ring of this capacity (or of another version)",
            ));
        }
        Ok(Channel {
            seg,
            ring,
            send,
            recv,
            evfd,
        })
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The descriptors ring operations use.
    pub fn links(&self) -> Links<'_> {
        Links {
            send: self.send.as_fd(),
            recv: self.recv.as_fd(),
            evfd: self.evfd.as_ref().map(|f| f.as_fd()),
        }
    }

    /// The ring's memfd, the socket ends and the eventfd, to pass to a child.
    pub fn fds(&self) -> [Option<std::os::fd::BorrowedFd<'_>>; 4] {
        [
            self.seg.fd(),
            Some(self.send.as_fd()),
            Some(self.recv.as_fd()),
            self.evfd.as_ref().map(|f| f.as_fd()),
        ]
    }
}

/// A message too large for the ring, in a memfd of its own: `offset` bytes of padding (less
/// than a page; see [`Large::new`]), then the message's `len` bytes, which end the file. A
/// reader finds the offset from the file's size ([`message_offset`]).
pub struct Large {
    /// The memfd.
    pub fd: OwnedFd,
    /// Bytes of the message.
    pub len: u64,
}

impl Large {
    /// Copies `parts` (concatenated) into a new memfd, from `offset` (taken modulo the page
    /// size), and seals its size; with `frozen`, its contents too (`F_SEAL_WRITE`), for a
    /// reader that may map it privately and hand the pages out as an immutable object. A
    /// reader that maps the message's pages into an object of its own needs the message's
    /// page offset in the file to equal the object's data offset in its pages: the writer
    /// passes the offset a new object of that kind will have.
    pub fn new(parts: &[&[u8]], offset: usize, frozen: bool) -> io::Result<Large> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let offset = offset % platform::page_size();
        let fd = platform::memfd_sealable(c"rmp-queue-message", (offset + len).max(1))?;
        platform::write_all_at(fd.as_fd(), parts, offset as u64)?;
        platform::seal(fd.as_fd(), frozen)?;
        Ok(Large {
            fd,
            len: len as u64,
        })
    }
}

/// Where the `len`-byte message in the memfd `fd` of a [`Large`] starts: the file's size less
/// `len`, which must be less than a page (anything else is not such a file).
pub fn message_offset(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> io::Result<u64> {
    let size = platform::file_size(fd)?;
    match size.checked_sub(len) {
        Some(off) if off < platform::page_size() as u64 => Ok(off),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a queue message's memfd holds {size} bytes, not a {len}-byte message"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        // Page-distinct bytes: a page mapped at the wrong offset reads differently.
        (0..n).map(|i| (i / 4096 * 7 + i * 13) as u8).collect()
    }

    #[test]
    fn a_large_message_sits_at_its_offset_in_a_sealed_file() {
        let page = platform::page_size();
        let msg = pattern(3 * page + 100);
        let large = Large::new(&[&msg[..1000], &msg[1000..]], page + 48, false).unwrap();
        assert_eq!(large.len, msg.len() as u64);
        let fd = large.fd.as_fd();
        assert_eq!(message_offset(fd, large.len).unwrap(), 48);
        assert!(platform::sealed(fd, false) && !platform::sealed(fd, true));
        assert!(rustix::fs::ftruncate(fd, 10).is_err(), "the size is sealed");
        rustix::io::pwrite(fd, b"still writable", 48).unwrap();
        rustix::io::pwrite(fd, &msg[..14], 48).unwrap();
        let frozen = Large::new(&[&msg], 0, true).unwrap();
        assert!(platform::sealed(frozen.fd.as_fd(), true));
        assert!(
            rustix::io::pwrite(frozen.fd.as_fd(), b"no", 0).is_err(),
            "contents sealed"
        );
        let mut back = vec![0u8; msg.len()];
        platform::read_exact_at(fd, &mut back, 48).unwrap();
        assert_eq!(back, msg);
        // A message longer than the file, or one that would start a page or more in, is
        // not this file's.
        assert!(message_offset(fd, large.len + 49).is_err());
        assert!(message_offset(fd, 10).is_err());
    }

    #[test]
    fn mapped_reads_share_the_pages_and_copy_on_write() {
        use rustix::mm::{MapFlags, ProtFlags};
        let page = platform::page_size();
        let len = 5 * page + 300;
        let msg = pattern(len);
        let large = Large::new(&[&msg], 48, true).unwrap();
        let fd = large.fd.as_fd();
        let region = 7 * page;
        // SAFETY: a fresh anonymous mapping of our own, unmapped at the end of the test.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                region,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
            .unwrap()
        }
        .cast::<u8>();
        // SAFETY: `base + 48 .. + len` lies in the region, which only this test uses and
        // unmaps whole.
        unsafe {
            let dst = base.add(48);
            platform::read_exact_at_mapped(fd, dst, len, 48).unwrap();
            let got = std::slice::from_raw_parts_mut(dst, len);
            assert_eq!(&got[..], &msg[..]);
            // A write copies its page: the file keeps the message.
            got[2 * page] ^= 0xff;
            let mut back = vec![0u8; len];
            platform::read_exact_at(fd, &mut back, 48).unwrap();
            assert_eq!(back, msg);
            assert_ne!(got[2 * page], msg[2 * page]);
            // Offsets that differ within a page are refused before anything is mapped.
            assert!(platform::read_exact_at_mapped(fd, base.add(49), len, 48).is_err());
            rustix::mm::munmap(base.cast(), region).unwrap();
        }
        // A file whose contents are not sealed is not mapped.
        let plain = Large::new(&[&msg], 48, false).unwrap().fd;
        let mut dst = vec![0u8; len + 2 * page];
        let at = dst.as_mut_ptr() as usize;
        let skew = (48 + page - at % page) % page;
        // SAFETY: `dst[skew..skew + len]` is ours; the call refuses before mapping anything.
        let refused = unsafe {
            platform::read_exact_at_mapped(plain.as_fd(), dst[skew..].as_mut_ptr(), len, 48)
        };
        assert!(refused.is_err());
    }

    #[test]
    fn only_blocks_glibc_maps_on_their_own_count_as_mapped() {
        if !platform::malloc_is_glibc() {
            return; // another allocator: the check is not used
        }
        // SAFETY: blocks from malloc, checked and freed here; the check reads the 16 bytes
        // before each block, its chunk header.
        unsafe {
            let big = libc::malloc(40 << 20).cast::<u8>();
            let small = libc::malloc(1000).cast::<u8>();
            assert!(!big.is_null() && !small.is_null());
            assert!(platform::glibc_mmapped_block(big, 40 << 20));
            assert!(
                !platform::glibc_mmapped_block(big, 41 << 20),
                "longer than the block"
            );
            assert!(
                !platform::glibc_mmapped_block(big.add(16), 1000),
                "not the block's start"
            );
            assert!(!platform::glibc_mmapped_block(small, 1000), "a heap block");
            libc::free(big.cast());
            libc::free(small.cast());
        }
    }
}
