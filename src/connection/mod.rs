//! Message framing on a stream descriptor (pipe or socket), wire-compatible with CPython's
//! `multiprocessing.connection`.
//!
//! A message is a 4-byte big-endian signed length followed by the payload; a payload longer
//! than `i32::MAX` bytes is announced by a length of -1 followed by an 8-byte big-endian
//! unsigned length (CPython 3.8+, `Connection._send_bytes`). Short messages go out in one
//! `writev` (header and payload together: no Nagle delay on TCP, one syscall on a pipe).
//!
//! The functions block on the descriptor and resume after `EINTR` once the first byte of a
//! message has moved, so that a signal never leaves half a frame on the wire. Waiting for a
//! message to *start* (and checking for signals while waiting) is the caller's job:
//! [`crate::platform::poll_readable`].

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

/// Largest length the 4-byte header can carry; longer payloads use the 8-byte extension.
pub const MAX_SHORT: usize = i32::MAX as usize;

/// Why a message could not be received.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the connection before a new message began (CPython: `EOFError`).
    Eof,
    /// The peer closed the connection in the middle of a message (CPython: `OSError("got end
    /// of file during message")`).
    TruncatedEof,
    /// The announced length exceeds the caller's limit; the payload was not read, so the
    /// stream is no longer usable (CPython: `OSError("bad message length")`).
    TooLong(u64),
    /// A system call failed.
    Io(io::Error),
}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> Self {
        RecvError::Io(e)
    }
}

/// The frame header for a payload of `len` bytes: 4 bytes, or 12 for the long form.
pub fn header(len: usize) -> ([u8; 12], usize) {
    let mut h = [0u8; 12];
    if len > MAX_SHORT {
        h[..4].copy_from_slice(&(-1i32).to_be_bytes());
        h[4..].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 12)
    } else {
        h[..4].copy_from_slice(&(len as i32).to_be_bytes());
        (h, 4)
    }
}

/// Writes every byte of `parts` in order, with as few `writev` calls as the descriptor allows.
fn write_all_vectored(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0; // first part not fully written
    let mut off = 0; // bytes of parts[idx] already written
    while idx < parts.len() {
        let mut slices = Vec::with_capacity(parts.len() - idx);
        slices.push(IoSlice::new(&parts[idx][off..]));
        slices.extend(parts[idx + 1..].iter().map(|p| IoSlice::new(p)));
        let mut n = match rustix::io::writev(fd, &slices) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        // Skip empty parts so that a trailing empty payload does not loop.
        while idx < parts.len() && parts[idx].len() == off {
            idx += 1;
            off = 0;
        }
    }
    Ok(())
}

/// Sends one framed message.
pub fn send_message(fd: BorrowedFd<'_>, payload: &[u8]) -> io::Result<()> {
    let (h, hlen) = header(payload.len());
    write_all_vectored(fd, &[&h[..hlen], payload])
}

/// Reads exactly `buf.len()` bytes. `started` says whether bytes of this message were already
/// read (it decides between `Eof` and `TruncatedEof` when the peer closes).
fn read_exact(fd: BorrowedFd<'_>, buf: &mut [u8], started: bool) -> Result<(), RecvError> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => {
                return Err(if got == 0 && !started {
                    RecvError::Eof
                } else {
                    RecvError::TruncatedEof
                })
            }
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    }
    Ok(())
}

/// Reads the next message's length (the header only).
pub fn recv_length(fd: BorrowedFd<'_>) -> Result<u64, RecvError> {
    let mut h = [0u8; 4];
    read_exact(fd, &mut h, false)?;
    let short = i32::from_be_bytes(h);
    if short == -1 {
        let mut long = [0u8; 8];
        read_exact(fd, &mut long, true)?;
        return Ok(u64::from_be_bytes(long));
    }
    // CPython never sends another negative length; treat one as a corrupt stream.
    u64::try_from(short).map_err(|_| RecvError::TooLong(u64::MAX))
}

/// Reads the payload of a message whose length [`recv_length`] returned into `buf` (exactly
/// that long), which may be uninitialised: the caller provides the memory, so it can be the
/// final object's, and nothing needs to zero it first. On success every byte is initialised.
pub fn recv_payload(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> Result<(), RecvError> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(([], _)) => return Err(RecvError::TruncatedEof),
            Ok((filled, _)) => got += filled.len(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    }
    Ok(())
}

/// Receives one message of at most `max_len` bytes (no limit for `None`).
pub fn recv_message(fd: BorrowedFd<'_>, max_len: Option<u64>) -> Result<Vec<u8>, RecvError> {
    let len = recv_length(fd)?;
    if max_len.is_some_and(|m| len > m) {
        return Err(RecvError::TooLong(len));
    }
    let len = usize::try_from(len).map_err(|_| RecvError::TooLong(len))?;
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(len)
        .map_err(|_| RecvError::Io(io::Error::from(io::ErrorKind::OutOfMemory)))?;
    payload.resize(len, 0);
    read_exact(fd, &mut payload, true)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
    }

    #[test]
    fn header_forms() {
        assert_eq!(&header(5).0[..4], &[0, 0, 0, 5]);
        assert_eq!(header(5).1, 4);
        let (h, n) = header(MAX_SHORT + 1);
        assert_eq!(n, 12);
        assert_eq!(&h[..4], &[0xff; 4]);
        assert_eq!(
            u64::from_be_bytes(h[4..12].try_into().unwrap()),
            MAX_SHORT as u64 + 1
        );
    }

    #[test]
    fn round_trip_small_empty_and_large() {
        let (r, w) = pipe();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let big = big.clone();
            std::thread::spawn(move || {
                send_message(w.as_fd(), b"hello").unwrap();
                send_message(w.as_fd(), b"").unwrap();
                send_message(w.as_fd(), &big).unwrap();
                drop(w);
            })
        };
        assert_eq!(recv_message(r.as_fd(), None).unwrap(), b"hello");
        assert_eq!(recv_message(r.as_fd(), None).unwrap(), b"");
        assert_eq!(recv_message(r.as_fd(), None).unwrap(), big);
        writer.join().unwrap();
        assert!(matches!(recv_message(r.as_fd(), None), Err(RecvError::Eof)));
    }

    #[test]
    fn wire_format_is_cpythons() {
        let (r, w) = pipe();
        send_message(w.as_fd(), b"abc").unwrap();
        let mut raw = [0u8; 7];
        read_exact(r.as_fd(), &mut raw, false).unwrap();
        assert_eq!(&raw, b"\x00\x00\x00\x03abc");
    }

    #[test]
    fn too_long_is_reported_without_reading_the_payload() {
        let (r, w) = pipe();
        send_message(w.as_fd(), &[7u8; 100]).unwrap();
        match recv_message(r.as_fd(), Some(10)) {
            Err(RecvError::TooLong(100)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn eof_inside_a_message_is_truncation() {
        let (r, w) = pipe();
        rustix::io::write(&w, b"\x00\x00\x00\x09abc").unwrap();
        drop(w);
        assert!(matches!(
            recv_message(r.as_fd(), None),
            Err(RecvError::TruncatedEof)
        ));
    }

    #[test]
    fn payload_into_uninitialised_memory() {
        let (r, w) = pipe();
        send_message(w.as_fd(), b"0123456789").unwrap();
        let len = recv_length(r.as_fd()).unwrap() as usize;
        let mut buf = vec![MaybeUninit::<u8>::uninit(); len];
        recv_payload(r.as_fd(), &mut buf).unwrap();
        // SAFETY: recv_payload initialised every byte (it returned Ok).
        let bytes: Vec<u8> = buf.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(bytes, b"0123456789");
        drop(w);
        let mut more = [MaybeUninit::<u8>::uninit(); 4];
        assert!(matches!(
            recv_payload(r.as_fd(), &mut more),
            Err(RecvError::TruncatedEof)
        ));
    }

    #[test]
    fn long_header_form_is_understood() {
        let (r, w) = pipe();
        let mut frame = (-1i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&3u64.to_be_bytes());
        frame.extend_from_slice(b"xyz");
        rustix::io::write(&w, &frame).unwrap();
        assert_eq!(recv_message(r.as_fd(), None).unwrap(), b"xyz");
    }
}
