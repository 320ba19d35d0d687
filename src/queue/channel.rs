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

/// A message too large for the ring, in a memfd of its own.
pub struct Large {
    /// The memfd.
    pub fd: OwnedFd,
    /// Bytes of the message.
    pub len: u64,
}

impl Large {
    /// Copies `parts` (concatenated) into a new memfd.
    pub fn new(parts: &[&[u8]]) -> io::Result<Large> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let fd = platform::memfd(c"rmp-queue-message", len.max(1))?;
        platform::write_all_at(fd.as_fd(), parts)?;
        Ok(Large {
            fd,
            len: len as u64,
        })
    }
}
