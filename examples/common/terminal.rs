//! The host terminal of an example that runs a container with
//! `process.terminal`: raw mode while the container owns it, and its size.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Whether this process's stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false)
}

/// The size of the terminal on stdin: (rows, columns).
pub fn window_size() -> Option<(u32, u32)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which lives for
    // the call; stdin is an open descriptor.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_row > 0).then_some((u32::from(size.ws_row), u32::from(size.ws_col)))
}

/// Stdin in raw mode (every key goes to the container's terminal as it
/// is typed, Ctrl-C included) until dropped, which restores it.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    pub fn enter() -> anyhow::Result<Self> {
        let stdin = stdin();
        let saved = termios::tcgetattr(stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(stdin(), SetArg::TCSANOW, &self.saved);
    }
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}
