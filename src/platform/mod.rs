//! The only module that issues raw system calls (through rustix, or libc where rustix has no
//! wrapper). Everything above this layer speaks in safe Rust types: `OwnedFd`, `Duration`,
//! `io::Result`. Linux only.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use rustix::thread::futex;
use rustix::time::Timespec;

/// How a child process ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The process called `exit(code)` (or returned from `main`).
    Exited(i32),
    /// The process was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The value CPython's `multiprocessing` reports as `exitcode`: the exit code, or the
    /// negated signal number for a process killed by a signal.
    pub fn returncode(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => -sig,
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// `pidfd_open(pid, 0)`: a file descriptor that refers to process `pid` (close-on-exec).
/// It polls readable once the process has exited.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Waits up to `timeout` (forever for `None`) for `fd` to poll readable. `Ok(false)` on timeout;
/// an `Interrupted` error when a signal arrived, so that the caller can run its handlers.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ts = timeout.map(timespec);
    let n = rustix::event::poll(&mut fds, ts.as_ref())?;
    Ok(n > 0)
}

/// `waitid(P_PIDFD, fd, WEXITED [| WNOHANG])`: reaps the child `fd` refers to. `Ok(None)` when
/// `nohang` is set and the child is still running.
pub fn waitid_pidfd(fd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<ExitStatus>> {
    let mut options = WaitIdOptions::EXITED;
    if nohang {
        options |= WaitIdOptions::NOHANG;
    }
    let status = match rustix::process::waitid(WaitId::PidFd(fd), options)? {
        Some(status) => status,
        None => return Ok(None),
    };
    if let Some(sig) = status.terminating_signal() {
        return Ok(Some(ExitStatus::Signaled(sig)));
    }
    match status.exit_status() {
        Some(code) => Ok(Some(ExitStatus::Exited(code))),
        // With WNOHANG, Linux reports "no child changed state" as a zeroed siginfo.
        None => Ok(None),
    }
}

/// `pidfd_send_signal(fd, sig, NULL, 0)`: signals the process `fd` refers to. Unlike `kill(pid)`
/// it cannot hit an unrelated process that reused the pid.
pub fn pidfd_send_signal(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with an fd we borrow for the call, a signal number the kernel
    // validates, a null siginfo pointer (allowed) and zero flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `FUTEX_WAIT` on a word that may be shared between processes (no `FUTEX_PRIVATE_FLAG`).
/// Returns when woken, on timeout (`TimedOut`), when the word no longer holds `expected`
/// (`WouldBlock`) or on a signal (`Interrupted`).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(timespec);
    Ok(futex::wait(
        word,
        futex::Flags::empty(),
        expected,
        ts.as_ref(),
    )?)
}

/// `FUTEX_WAKE` of up to `count` waiters on a process-shared word.
pub fn futex_wake(word: &AtomicU32, count: u32) -> io::Result<usize> {
    Ok(futex::wake(word, futex::Flags::empty(), count)?)
}

/// An anonymous shared-memory file of `len` bytes (`memfd_create` + `ftruncate`), close-on-exec.
pub fn memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    memfd_with(name, len, rustix::fs::MemfdFlags::empty())
}

fn memfd_with(name: &CStr, len: usize, flags: rustix::fs::MemfdFlags) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC | flags)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// Maps `len` bytes of `fd` read-write and `MAP_SHARED`, so that every process mapping the same
/// file sees the same bytes.
pub fn mmap_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh mapping chosen by the kernel (null hint) cannot alias any Rust object;
    // the caller owns the returned region and unmaps it with `munmap`.
    let ptr = unsafe {
        rustix::mm::mmap(
            ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Unmaps a region returned by [`mmap_shared`].
///
/// # Safety
/// `ptr`/`len` must describe exactly one live mapping from [`mmap_shared`], and no reference
/// into it may be used afterwards.
pub unsafe fn munmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { Ok(rustix::mm::munmap(ptr.as_ptr().cast(), len)?) }
}

/// Starts `exe` with `argv` (argv[0] included) and the current environment through
/// `posix_spawn` (glibc runs it as `clone(CLONE_VM | CLONE_VFORK)` + `execve`, so a large
/// parent costs nothing to copy). The descriptors in `pass_fds` are inherited by the child with
/// their close-on-exec flag cleared; every other descriptor at or above the lowest free slot
/// after them is closed, and those below it that the caller left inheritable stay open, as
/// with any exec (Python creates descriptors non-inheritable, PEP 446).
pub fn spawn(exe: &CStr, argv: &[CString], pass_fds: &[RawFd]) -> io::Result<i32> {
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .collect();
    argv_ptrs.push(ptr::null_mut());
    let highest = pass_fds.iter().copied().max().unwrap_or(2).max(2);

    let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: initialises the file-actions object in place; it is destroyed below on every path.
    let rc = unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let result = (|| {
        for &fd in pass_fds {
            // SAFETY: `actions` was initialised above. dup2(fd, fd) in a spawn file action
            // clears FD_CLOEXEC on `fd` in the child (POSIX 2018; glibc >= 2.29).
            let rc =
                unsafe { libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), fd, fd) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        // SAFETY: `actions` was initialised above; closefrom only affects the child.
        let rc = unsafe {
            libc::posix_spawn_file_actions_addclosefrom_np(actions.as_mut_ptr(), highest + 1)
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut pid: libc::pid_t = 0;
        extern "C" {
            static environ: *const *mut libc::c_char;
        }
        // SAFETY: every pointer is valid for the call: `exe` and `argv_ptrs` (null-terminated)
        // borrow live CStrings, `actions` is initialised, a null attr means defaults, and
        // `environ` is the process environment that libc itself maintains.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                exe.as_ptr(),
                actions.as_ptr(),
                ptr::null(),
                argv_ptrs.as_ptr(),
                environ,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(pid)
    })();
    // SAFETY: `actions` was initialised by posix_spawn_file_actions_init and is not used again.
    unsafe { libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr()) };
    result
}

/// Wraps a descriptor number received from elsewhere (a child's inherited fd).
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub unsafe fn owned_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: forwarded from this function's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Blocks every signal in the calling thread, so that the process's signals (Ctrl-C) are
/// delivered to the interpreter's threads, never to a Rust helper thread.
pub fn block_all_signals_in_this_thread() -> io::Result<()> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set in place; pthread_sigmask reads it and changes
    // only the calling thread's mask; a null old-set pointer is allowed.
    let rc = unsafe {
        libc::sigfillset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Kills the calling process with SIGKILL (it cannot be caught, so this does not return once
/// the kernel delivers it).
pub fn kill_self() {
    // SAFETY: getpid cannot fail; kill with our own pid and a valid signal has no memory
    // effects on this process's Rust state.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// Waits up to `timeout` for `fd` to poll writable (or in error, so that the write reports
/// it). `Ok(false)` on timeout; `Interrupted` on a signal.
pub fn poll_writable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let ts = timeout.map(timespec);
    let n = rustix::event::poll(&mut fds, ts.as_ref())?;
    Ok(n > 0)
}

/// Waits up to `timeout` for any of `fds` to poll readable (or hang up / fail); returns the
/// indices of those that did (empty on timeout). `Interrupted` on a signal.
pub fn poll_any_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    let n = rustix::event::poll(&mut pfds, ts.as_ref())?;
    if n == 0 {
        return Ok(Vec::new());
    }
    Ok(pfds
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.revents().is_empty())
        .map(|(i, _)| i)
        .collect())
}

/// The calling thread's kernel thread id (`gettid`).
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// The calling process's id.
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// Start time of thread `tid` of process `pid`, in clock ticks since boot (field 22 of
/// `/proc/<pid>/task/<tid>/stat`). `Ok(None)` when that thread no longer runs: gone, never
/// belonged to `pid`, or exited but not yet reaped (a zombie). With `pid == 0` the thread is looked up as `/proc/<tid>/stat`, which
/// the kernel serves for any live thread id even though it is not listed.
pub fn thread_start_time(pid: i32, tid: i32) -> io::Result<Option<u64>> {
    let path = if pid == 0 {
        format!("/proc/{tid}/stat")
    } else {
        format!("/proc/{pid}/task/{tid}/stat")
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may contain anything, including
    // spaces and ')': the fields after it start after the *last* ')'.
    let after = text
        .iter()
        .rposition(|&b| b == b')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    // Fields 3.. follow: the state is field 3, the start time field 22 (the 20th after the
    // name). A zombie (`Z`) or dead (`X`) task has exited: it is not running any more, even
    // though its `/proc` entry stays until it is reaped.
    let mut fields = after.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let state = fields
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    if matches!(state, b"Z" | b"X" | b"x") {
        return Ok(None);
    }
    let field = fields
        .nth(18)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    let s = std::str::from_utf8(field)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))
}

/// Waits (at most 5 s) until thread `tid` of this process no longer runs as `/proc` tells.
/// Tests need it after `join`: a thread's join returns as it starts to exit (its tid is
/// cleared early in the kernel's exit path), while `/proc` may still show it running.
#[cfg(test)]
pub(crate) fn wait_thread_gone(tid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while thread_start_time(getpid(), tid).ok().flatten().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} still runs"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

static FORK_EPOCH: AtomicU32 = AtomicU32::new(0);
static ATFORK: std::sync::Once = std::sync::Once::new();

extern "C" fn bump_fork_epoch() {
    // Relaxed: the child is single-threaded when this runs; readers in the child run after it.
    FORK_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A number that changes in a child after every `fork()` (a `pthread_atfork` child handler
/// bumps it), so per-thread caches of ids can tell that they were inherited.
pub fn fork_epoch() -> u32 {
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic (async-signal-safe);
        // the handler is a `'static` function.
        unsafe {
            libc::pthread_atfork(None, None, Some(bump_fork_epoch));
        }
    });
    FORK_EPOCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// `getpid()`, cached until the next fork (one atomic load instead of a system call on hot
/// paths that must tell an inherited object from one of their own).
pub fn cached_pid() -> i32 {
    static PID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);
    let epoch = fork_epoch();
    // Relaxed: the value is self-contained (epoch and pid in one word).
    let v = PID.load(std::sync::atomic::Ordering::Relaxed);
    if (v >> 32) as u32 == epoch && v != u64::MAX {
        return v as u32 as i32;
    }
    let pid = getpid();
    PID.store(
        (u64::from(epoch) << 32) | u64::from(pid as u32),
        std::sync::atomic::Ordering::Relaxed,
    );
    pid
}

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets (message boundaries kept, reliable,
/// in order), non-blocking and close-on-exec: the side channel that carries a queue's
/// out-of-ring segments as `SCM_RIGHTS` descriptors.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the two-element array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` with one descriptor attached (`SCM_RIGHTS`), without blocking
/// (`WouldBlock` when the socket's buffer is full).
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds CMSG_SPACE(sizeof(int)) bytes, so the first header
    // exists and its data area holds one int; the writes stay inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    loop {
        // SAFETY: `msg` describes live buffers (see above).
        let n = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads the first `buf.len()` bytes of the next message without removing it (`MSG_PEEK`,
/// no descriptor installed). `Ok(None)` when no message waits.
pub fn peek_message(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Removes the next message, returning its descriptor if it carried one (close-on-exec).
/// `Ok(None)` when no message waits; a message without a descriptor gives `Ok(Some(None))`.
pub fn recv_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Option<OwnedFd>>> {
    recv_fd_flags(sock, buf, 0)
}

/// As [`recv_fd`], but leaves the message at the front of the socket (`MSG_PEEK`): the
/// kernel installs a duplicate of its descriptor here (Linux clones the passed files on a
/// peek of a Unix socket), and the original stays in the message for whoever removes it.
pub fn peek_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Option<OwnedFd>>> {
    recv_fd_flags(sock, buf, libc::MSG_PEEK)
}

fn recv_fd_flags(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<Option<Option<OwnedFd>>> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    loop {
        // SAFETY: `msg` describes live, writable buffers.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | flags,
            )
        };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
    // SAFETY: the kernel filled `msg_control`/`msg_controllen`; the CMSG macros walk only
    // inside it, and an SCM_RIGHTS header of CMSG_LEN(int) carries exactly one descriptor,
    // which is now ours.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null()
            && (*c).cmsg_level == libc::SOL_SOCKET
            && (*c).cmsg_type == libc::SCM_RIGHTS
            && (*c).cmsg_len as usize
                >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize
        {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
            return Ok(Some(Some(OwnedFd::from_raw_fd(fd))));
        }
    }
    Ok(Some(None))
}

/// An `eventfd` in semaphore mode (`EFD_SEMAPHORE`: each read takes one), non-blocking and
/// close-on-exec: it polls readable exactly while its count is above zero.
pub fn semaphore_eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::SEMAPHORE | EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
    )?)
}

/// Adds `n` to an eventfd's count.
pub fn eventfd_add(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    loop {
        match rustix::io::write(fd, &n.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes one from a semaphore eventfd's count; `Ok(false)` when it was zero.
pub fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut b = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut b) {
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `parts`, one after the other, into the file `fd` from `offset` (`pwrite`,
/// retried on `EINTR` and short writes). Into a memfd, the kernel copies straight into the
/// file's pages as it allocates them: no mapping, no user page faults, no unmapping (on this
/// project's VM, half the time of populating a mapping and copying into it).
pub fn write_all_at(fd: BorrowedFd<'_>, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut off = offset;
    for p in parts {
        let mut rest = *p;
        while !rest.is_empty() {
            match rustix::io::pwrite(fd, rest, off) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    rest = &rest[n..];
                    off += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Fills `dst` from the file `fd`, from `offset` (`pread`, retried on `EINTR` and short
/// reads; a file shorter than `dst` is an `UnexpectedEof`). The kernel copies into `dst`
/// directly: fresh destination pages fault inside the copy, far cheaper here than faults
/// taken by a user-space copy.
pub fn read_exact_at(fd: BorrowedFd<'_>, dst: &mut [u8], offset: u64) -> io::Result<()> {
    let mut off = 0usize;
    while off < dst.len() {
        match rustix::io::pread(fd, &mut dst[off..], offset + off as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fills the `len` bytes at `dst` from the file `fd` from `offset`, as [`read_exact_at`]
/// does, except that the whole pages of `dst` become a private mapping of the file's pages
/// ([`map_file_private_over`]): only the partial pages at either end are copied. `dst` and
/// `offset` must be the same distance past a page boundary, and the file sealed with its
/// contents ([`seal`]).
///
/// On an error the pages of `dst` may hold no mapping: the caller must only free the block.
///
/// # Safety
/// `dst..dst + len` is writable memory the caller owns alone, inside a block that is
/// unmapped whole when freed (the contract of [`map_file_private_over`]).
pub unsafe fn read_exact_at_mapped(
    fd: BorrowedFd<'_>,
    dst: *mut u8,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    let page = page_size();
    let start = dst as usize;
    if start % page != (offset % page as u64) as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "destination and file offset differ within a page",
        ));
    }
    if !sealed(fd, true) || file_size(fd)? < offset + len as u64 {
        // A mapping past the file's end would fault (SIGBUS) when read, and a write to the
        // file would show through pages not yet copied: only a file that holds the range and
        // can change no more is mapped.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the file is not sealed, or shorter than the range to map",
        ));
    }
    let first = start.next_multiple_of(page);
    let end = (start + len) & !(page - 1);
    if end <= first {
        // SAFETY: the caller owns the `len` bytes at `dst`.
        return read_exact_at(
            fd,
            unsafe { std::slice::from_raw_parts_mut(dst, len) },
            offset,
        );
    }
    let head = first - start;
    let tail = start + len - end;
    // SAFETY: `first..end` is page-aligned and inside the caller's range, with the file's
    // matching offset page-aligned too (checked above); the caller's contract covers the rest.
    unsafe { map_file_private_over(first as *mut u8, end - first, fd, offset + head as u64)? };
    // SAFETY: the head and tail are the caller's, outside the pages just mapped.
    let (head_buf, tail_buf) = unsafe {
        (
            std::slice::from_raw_parts_mut(dst, head),
            std::slice::from_raw_parts_mut(end as *mut u8, tail),
        )
    };
    read_exact_at(fd, head_buf, offset)?;
    read_exact_at(fd, tail_buf, offset + (end - start) as u64)?;
    Ok(())
}

/// The size of a page of memory (4 KiB on x86-64; 4, 16 or 64 KiB on arm64 kernels).
pub fn page_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system constant.
    *SIZE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// The size of the file `fd` (`fstat`).
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// Puts the pages of the file `fd` from `offset` in place of the whole pages at `addr`
/// (`len` bytes): a private, copy-on-write mapping (`MAP_FIXED | MAP_PRIVATE`), whose page
/// table entries are then filled for reading (`MADV_POPULATE_READ`, Linux 5.14; without it
/// the pages fault in on first use). Reading shares the file's pages; a write copies the
/// page it touches, as in any private mapping. The population goes by `POPULATE_CHUNK`s so
/// that no call holds the process's memory-map lock long (a single `MAP_POPULATE` of 128
/// MiB held it for 15 ms, stalling every other thread that allocated meanwhile).
///
/// On an error the range may hold no mapping at all: the caller must then not touch it,
/// only free the block it belongs to (`munmap` of a range with holes is fine).
///
/// # Safety
/// `addr` and `len` are page-aligned and the range is memory the caller owns alone (no other
/// pointer into it is used meanwhile), inside a block of memory that is returned to the
/// kernel with `munmap` when freed, never recycled by an allocator that expects its old
/// pages (or zeroes) there.
pub unsafe fn map_file_private_over(
    addr: *mut u8,
    len: usize,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> io::Result<()> {
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    const POPULATE_CHUNK: usize = 4 << 20;
    // SAFETY: the caller owns the range alone and lets it be replaced (see above).
    let got = unsafe {
        rustix::mm::mmap(
            addr.cast(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::FIXED,
            fd,
            offset,
        )?
    };
    if got.cast::<u8>() != addr {
        // MAP_FIXED maps at `addr` or fails: unreachable. Undo it and report.
        // SAFETY: the mapping just made, which nothing uses.
        let _ = unsafe { rustix::mm::munmap(got, len) };
        return Err(io::Error::other("MAP_FIXED mapped elsewhere"));
    }
    let mut done = 0;
    while done < len {
        let n = POPULATE_CHUNK.min(len - done);
        // SAFETY: advice on part of the mapping just made; populating changes no contents.
        let r = unsafe { rustix::mm::madvise(addr.add(done).cast(), n, Advice::LinuxPopulateRead) };
        if r.is_err() {
            // An older kernel (EINVAL), a signal (EINTR), no memory for page tables (ENOMEM):
            // the pages not populated fault in when first read.
            break;
        }
        done += n;
    }
    Ok(())
}

/// Whether the `malloc` this process's symbol lookup finds is glibc's own (no allocator
/// such as jemalloc, tcmalloc or mimalloc interposed with `LD_PRELOAD` or by linking): a
/// first filter before [`glibc_mmapped_block`]. It cannot see everything (a library that
/// interposes the versioned `malloc@GLIBC_2.2.5`, as glibc's own `libc_malloc_debug.so`
/// does, or valgrind's redirections); the chunk check is the guard that decides.
pub fn malloc_is_glibc() -> bool {
    static IS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IS.get_or_init(|| {
        // SAFETY: dlopen with RTLD_NOLOAD only looks up a library already loaded (it loads
        // nothing and runs no constructor); dlsym reads symbol tables; the handle is closed.
        unsafe {
            let libc_so = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if libc_so.is_null() {
                return false; // not glibc (musl has no libc.so.6)
            }
            let own = libc::dlsym(libc_so, c"malloc".as_ptr());
            let glibc = !libc::dlsym(libc_so, c"gnu_get_libc_version".as_ptr()).is_null();
            libc::dlclose(libc_so);
            glibc && !own.is_null() && libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) == own
        }
    })
}

/// Bytes of glibc's chunk header before a block `malloc` returns: two words.
pub const GLIBC_CHUNK_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// Whether `block`, a pointer glibc's `malloc` returned for at least `len` bytes, is an
/// "mmapped chunk": a block glibc serves by a mapping of its own, which `free` unmaps whole
/// and in which nothing else is ever placed. Such a chunk starts at a page boundary, two
/// words ([`GLIBC_CHUNK_HEADER`]) before the block, with those two words: `prev_size` (0 when the chunk starts its
/// mapping) and the chunk's size with the flag `IS_MMAPPED` (2) set and the other two flag
/// bits clear. A chunk of glibc's heap never has that flag, so this cannot take a heap
/// block for a mapped one.
///
/// # Safety
/// [`malloc_is_glibc`] holds and `block` is either a pointer `malloc` returned (glibc's
/// chunk header is then the two words before it) or, under CPython's debug allocator, the
/// data behind that layer's header in such a block (the check then reads that header,
/// whose first word, the size asked for, is never 0: it fails). Either way the two words
/// before `block` are readable.
pub unsafe fn glibc_mmapped_block(block: *const u8, len: usize) -> bool {
    const HEADER: usize = GLIBC_CHUNK_HEADER;
    const IS_MMAPPED: usize = 2;
    const FLAGS: usize = 7;
    let page = page_size();
    let chunk = (block as usize).wrapping_sub(HEADER);
    if chunk % page != 0 {
        return false;
    }
    // SAFETY: the two words before `block` are readable (the caller's contract), and
    // aligned since `chunk` is page-aligned.
    let (prev_size, size) = unsafe {
        let words = chunk as *const usize;
        (words.read(), words.add(1).read())
    };
    let total = size & !FLAGS;
    prev_size == 0 && size & FLAGS == IS_MMAPPED && total % page == 0 && total >= HEADER + len
}

/// A new memfd of `len` bytes that can be sealed ([`seal`]).
pub fn memfd_sealable(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    memfd_with(name, len, rustix::fs::MemfdFlags::ALLOW_SEALING)
}

/// Seals a [`memfd_sealable`] file for good: its size (against shrinking and growing), and
/// with `contents` its bytes too (`F_SEAL_WRITE`, refused while a shared writable mapping of
/// it exists). A private mapping of a file sealed so can neither fault past a shrunk end nor
/// see its unwritten pages change.
pub fn seal(fd: BorrowedFd<'_>, contents: bool) -> io::Result<()> {
    use rustix::fs::SealFlags;
    let mut seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    if contents {
        seals |= SealFlags::WRITE;
    }
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Whether the file `fd` can no longer shrink, nor (with `contents`) be written.
pub fn sealed(fd: BorrowedFd<'_>, contents: bool) -> bool {
    use rustix::fs::SealFlags;
    let want = if contents {
        SealFlags::SHRINK | SealFlags::WRITE
    } else {
        SealFlags::SHRINK
    };
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(want))
}

/// Maps `len` bytes of `fd` shared and read-write with the pages populated up front
/// (`MAP_POPULATE`: one call instead of a fault per page, for a region about to be written
/// whole).
pub fn mmap_shared_populated(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: as in `mmap_shared`: a fresh kernel-chosen mapping aliases nothing.
    let ptr = unsafe {
        rustix::mm::mmap(
            ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::POPULATE,
            fd,
            0,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}
