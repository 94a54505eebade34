//! Signals as a typed value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A signal number that exists on Linux (1 to 64), named or numbered.
///
/// Parsed from `SIGTERM`, `TERM`, `term` or `15` alike (as `kill` and
/// `runc kill` accept them); shown as its name (`SIGTERM`, `SIGRTMIN+3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct Signal(i32);

/// A value that is not a Linux signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a signal (expected a name such as SIGTERM or a number from 1 to 64)")]
pub struct SignalError {
    /// What was given.
    pub value: String,
}

/// The standard signals of Linux on x86-64 and arm64, by number.
const NAMES: [(i32, &str); 31] = [
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (16, "STKFLT"),
    (17, "CHLD"),
    (18, "CONT"),
    (19, "STOP"),
    (20, "TSTP"),
    (21, "TTIN"),
    (22, "TTOU"),
    (23, "URG"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (26, "VTALRM"),
    (27, "PROF"),
    (28, "WINCH"),
    (29, "IO"),
    (30, "PWR"),
    (31, "SYS"),
];

/// `SIGRTMIN` as glibc, `kill -l`, Docker and runc number it: the kernel's
/// first two real-time signals (32, 33) are reserved by the C library's
/// threads and have no name.
const RTMIN: i32 = 34;
/// The highest signal number.
const MAX: i32 = 64;

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(1);
    /// SIGINT.
    pub const INT: Signal = Signal(2);
    /// SIGQUIT.
    pub const QUIT: Signal = Signal(3);
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);
    /// SIGUSR1.
    pub const USR1: Signal = Signal(10);
    /// SIGUSR2.
    pub const USR2: Signal = Signal(12);
    /// SIGTERM.
    pub const TERM: Signal = Signal(15);
    /// SIGCONT.
    pub const CONT: Signal = Signal(18);
    /// SIGSTOP.
    pub const STOP: Signal = Signal(19);
    /// SIGWINCH.
    pub const WINCH: Signal = Signal(28);

    /// The signal numbered `number`, if Linux has one.
    pub fn new(number: i32) -> Result<Self, SignalError> {
        if (1..=MAX).contains(&number) {
            Ok(Signal(number))
        } else {
            Err(SignalError {
                value: number.to_string(),
            })
        }
    }

    /// Its number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// Its name without the `SIG` prefix (`TERM`, `RTMIN+3`), as `kill -l`
    /// prints it; `None` for 32 and 33, which have none.
    pub fn name(self) -> Option<String> {
        match NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => Some((*name).to_owned()),
            None if self.0 < RTMIN => None,
            None if self.0 == RTMIN => Some("RTMIN".to_owned()),
            None if self.0 == MAX => Some("RTMAX".to_owned()),
            None if self.0 - RTMIN <= MAX - self.0 => Some(format!("RTMIN+{}", self.0 - RTMIN)),
            None => Some(format!("RTMAX-{}", MAX - self.0)),
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, SignalError> {
        let err = || SignalError {
            value: s.to_owned(),
        };
        let trimmed = s.trim();
        if let Ok(n) = trimmed.parse::<i32>() {
            return Signal::new(n).map_err(|_| err());
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((n, _)) = NAMES.iter().find(|(_, known)| *known == name) {
            return Ok(Signal(*n));
        }
        let realtime = |rest: &str, base: i32, sign: i32| -> Result<Signal, SignalError> {
            let offset = if rest.is_empty() {
                0
            } else {
                rest.strip_prefix(if sign > 0 { '+' } else { '-' })
                    .and_then(|n| n.parse::<i32>().ok())
                    .ok_or_else(err)?
            };
            Signal::new(base + sign * offset)
                .ok()
                .filter(|s| (RTMIN..=MAX).contains(&s.0))
                .ok_or_else(err)
        };
        match name {
            n if n.starts_with("RTMIN") => realtime(&n[5..], RTMIN, 1),
            n if n.starts_with("RTMAX") => realtime(&n[5..], MAX, -1),
            _ => Err(err()),
        }
    }
}

#[cfg(feature = "slog")]
impl slog::Value for Signal {
    fn serialize(
        &self,
        _record: &slog::Record<'_>,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        serializer.emit_arguments(key, &format_args!("{self}"))
    }
}

impl TryFrom<i32> for Signal {
    type Error = SignalError;
    fn try_from(n: i32) -> Result<Self, SignalError> {
        Signal::new(n)
    }
}

impl TryFrom<u32> for Signal {
    type Error = SignalError;
    fn try_from(n: u32) -> Result<Self, SignalError> {
        i32::try_from(n)
            .map_err(|_| SignalError {
                value: n.to_string(),
            })
            .and_then(Signal::new)
    }
}

impl From<Signal> for i32 {
    fn from(s: Signal) -> i32 {
        s.0
    }
}

impl From<Signal> for u32 {
    fn from(s: Signal) -> u32 {
        s.0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers_alike() {
        for s in ["SIGTERM", "TERM", "term", "sigterm", "15", " 15 "] {
            assert_eq!(s.parse::<Signal>().unwrap(), Signal::TERM, "{s}");
        }
        assert_eq!("SIGRTMIN".parse::<Signal>().unwrap().number(), 34);
        assert_eq!("SIGRTMIN+3".parse::<Signal>().unwrap().number(), 37);
        assert_eq!("RTMAX-1".parse::<Signal>().unwrap().number(), 63);
        assert_eq!("SIGRTMAX".parse::<Signal>().unwrap().number(), 64);
    }

    #[test]
    fn refuses_what_is_not_a_signal() {
        for s in [
            "", "0", "65", "-9", "SIGFOO", "RTMIN+40", "RTMAX+1", "RTMAX-40", "9x",
        ] {
            assert!(s.parse::<Signal>().is_err(), "{s:?}");
        }
        assert!(Signal::try_from(u32::MAX).is_err());
    }

    #[test]
    fn every_number_round_trips_through_its_name() {
        for n in 1..=64 {
            let s = Signal::new(n).unwrap();
            assert_eq!(s.to_string().parse::<Signal>().unwrap(), s, "{s}");
        }
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
        assert_eq!(Signal::new(36).unwrap().to_string(), "SIGRTMIN+2");
        assert_eq!(Signal::new(60).unwrap().to_string(), "SIGRTMAX-4");
        assert_eq!(Signal::new(32).unwrap().to_string(), "32");
    }

    #[test]
    fn matches_the_c_library() {
        for (n, name) in NAMES {
            let expected = match name {
                "HUP" => libc::SIGHUP,
                "INT" => libc::SIGINT,
                "QUIT" => libc::SIGQUIT,
                "KILL" => libc::SIGKILL,
                "USR1" => libc::SIGUSR1,
                "SEGV" => libc::SIGSEGV,
                "USR2" => libc::SIGUSR2,
                "PIPE" => libc::SIGPIPE,
                "TERM" => libc::SIGTERM,
                "CHLD" => libc::SIGCHLD,
                "CONT" => libc::SIGCONT,
                "STOP" => libc::SIGSTOP,
                "WINCH" => libc::SIGWINCH,
                "SYS" => libc::SIGSYS,
                _ => continue,
            };
            assert_eq!(n, expected, "SIG{name}");
        }
        assert_eq!(RTMIN, libc::SIGRTMIN());
        assert_eq!(MAX, libc::SIGRTMAX());
    }
}
