//! Child processes, watched through pidfds.
//!
//! CPython's `popen_fork` watches a child through a pipe whose write end the child holds and
//! reaps it with `waitpid`. Here the sentinel is a pidfd: it polls readable exactly when the
//! child has exited, signals cannot reach a recycled pid, and `waitid(P_PIDFD)` reaps exactly
//! this child. Creating the process is not this module's business: `fork` must go through
//! `os.fork()` (so that the interpreter's fork hooks run) and `spawn` through
//! [`crate::platform::spawn`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use crate::platform::{self, ExitStatus};

/// A process this process may wait for and signal, held through a pidfd.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    pidfd: OwnedFd,
    /// Set once the child has been reaped (by whichever thread got there first).
    status: Mutex<Option<ExitStatus>>,
    /// Whether this process is the child's parent (only a parent can reap).
    reapable: bool,
}

impl Child {
    /// Watches the child `pid` of this process. Must be called before anything else could reap
    /// it, which holds right after `fork`/`spawn` returned its pid.
    pub fn open(pid: i32) -> io::Result<Child> {
        Ok(Child {
            pid,
            pidfd: platform::pidfd_open(pid)?,
            status: Mutex::new(None),
            reapable: true,
        })
    }

    /// Watches a process that is not our child (e.g. one forked by a fork server) through a
    /// pidfd received from its parent. Its exit status must come from elsewhere.
    pub fn from_pidfd(pid: i32, pidfd: OwnedFd) -> Child {
        Child {
            pid,
            pidfd,
            status: Mutex::new(None),
            reapable: false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd: readable once the process has exited.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The exit status if the child has ended, reaping it; never blocks.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        // A poisoned lock only means another thread panicked while holding it; the
        // Option inside is still valid.
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            if !self.reapable {
                return Ok(None);
            }
            *status = platform::waitid_pidfd(self.pidfd.as_fd(), true)?;
        }
        Ok(*status)
    }

    /// Whether the process has exited (without reaping it). Works for non-children too.
    pub fn has_exited(&self) -> io::Result<bool> {
        if self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(true);
        }
        platform::poll_readable(self.pidfd.as_fd(), Some(Duration::ZERO))
    }

    /// Waits at most `slice` for the child to exit, then reaps it. `Ok(None)` if it is still
    /// running; an `Interrupted` error if a signal arrived first.
    pub fn wait_slice(&self, slice: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.try_wait()? {
            return Ok(Some(status));
        }
        if platform::poll_readable(self.pidfd.as_fd(), Some(slice))? {
            return self.try_wait();
        }
        Ok(None)
    }

    /// Sends `sig` to the process. Sending to a process that has exited but not been reaped
    /// succeeds; sending after it was reaped fails with `ESRCH`.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        platform::pidfd_send_signal(self.pidfd.as_fd(), sig)
    }
}

/// Makes this process die with the process `parent_pidfd` refers to: a helper thread (all
/// signals blocked) waits for that pidfd to poll readable and then SIGKILLs this process.
///
/// `PR_SET_PDEATHSIG` cannot serve every case: it fires when the *thread* that forked us
/// exits, not the process, and under forkserver our kernel parent is the server, which
/// outlives the owner. A pidfd refers to the whole process whoever forked us.
pub fn die_with_parent(parent_pidfd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = parent_pidfd.try_clone_to_owned()?;
    std::thread::Builder::new()
        .name("rmp-parent-watch".into())
        .spawn(move || {
            let _ = platform::block_all_signals_in_this_thread();
            loop {
                match platform::poll_readable(fd.as_fd(), None) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The descriptor is unusable: we cannot watch, so do not kill.
                    Err(_) => return,
                }
            }
            platform::kill_self();
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn spawn_sh(script: &str) -> Child {
        let argv = [
            CString::new("sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new(script).unwrap(),
        ];
        let pid = platform::spawn(c"/bin/sh", &argv, &[]).unwrap();
        Child::open(pid).unwrap()
    }

    fn wait(child: &Child) -> ExitStatus {
        loop {
            if let Some(st) = child.wait_slice(Duration::from_millis(100)).unwrap() {
                return st;
            }
        }
    }

    #[test]
    fn exit_code_is_reported() {
        let child = spawn_sh("exit 7");
        assert_eq!(wait(&child), ExitStatus::Exited(7));
        assert_eq!(wait(&child).returncode(), 7);
    }

    #[test]
    fn signal_gives_negative_returncode() {
        let child = spawn_sh("sleep 30");
        assert_eq!(child.try_wait().unwrap(), None);
        assert!(!child.has_exited().unwrap());
        child.signal(libc::SIGKILL).unwrap();
        let st = wait(&child);
        assert_eq!(st, ExitStatus::Signaled(libc::SIGKILL));
        assert_eq!(st.returncode(), -9);
        assert!(child.has_exited().unwrap());
    }

    #[test]
    fn slice_times_out_while_running() {
        let child = spawn_sh("sleep 30");
        assert_eq!(child.wait_slice(Duration::from_millis(20)).unwrap(), None);
        child.signal(libc::SIGTERM).unwrap();
        assert_eq!(wait(&child), ExitStatus::Signaled(libc::SIGTERM));
    }

    #[test]
    fn passed_fds_are_inherited_and_others_closed() {
        // The child writes into the pipe we pass it; an fd we do not pass must be closed.
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (r2, w2) = rustix::pipe::pipe().unwrap(); // inheritable, above the passed fd
        use std::os::fd::AsRawFd;
        let (wfd, w2fd) = (w.as_raw_fd(), w2.as_raw_fd());
        let script = format!("echo ok >&{wfd}; {{ echo leak >&{w2fd}; }} 2>/dev/null; exit 0");
        let argv = [
            CString::new("sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new(script).unwrap(),
        ];
        let pid = platform::spawn(c"/bin/sh", &argv, &[wfd]).unwrap();
        let child = Child::open(pid).unwrap();
        drop(w);
        drop(w2);
        assert_eq!(wait(&child), ExitStatus::Exited(0));
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok\n");
        if w2fd > wfd {
            // Closed in the child by closefrom: the pipe reads EOF, nothing leaked.
            assert_eq!(rustix::io::read(&r2, &mut buf).unwrap(), 0);
        }
    }
}
