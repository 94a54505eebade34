//! The guest kernel command line, built from parts (pure, no I/O).
//!
//! [`KernelParamsBuilder`] puts together the base parameters for a fast VM
//! boot, the systemd masks for guest images that run systemd, debug and
//! trace switches, `agent.*` parameters for the guest agent, and the
//! user's extra parameters, which override the others by key. The result,
//! [`KernelParams`], renders to the command line with `Display`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Parameters every guest gets: fast boot in a VM, panics end the VM
/// (QEMU runs with `-no-reboot`), no legacy keyboard probing.
const BASE: &[(&str, Option<&str>)] = &[
    ("panic", Some("1")),
    ("reboot", Some("k")),
    ("tsc", Some("reliable")),
    ("no_timer_check", None),
    ("rcupdate.rcu_expedited", Some("1")),
    ("i8042.direct", Some("1")),
    ("i8042.dumbkbd", Some("1")),
    ("i8042.nopnp", Some("1")),
    ("i8042.noaux", Some("1")),
    ("noreplace-smp", None),
    ("cryptomgr.notests", None),
    ("net.ifnames", Some("0")),
];

/// systemd units masked in guests that run systemd (unless tracing):
/// the agent does their jobs, and they cost boot time.
pub const SYSTEMD_MASKED_UNITS: &[&str] = &[
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journal-flush.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-timesyncd.service",
    "systemd-update-utmp.service",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-random-seed.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
];

/// The prefix of parameters meant for the guest agent.
pub const AGENT_PREFIX: &str = "agent.";

/// One parameter: `key` or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelParam {
    /// The key (`console`, `agent.log`).
    pub key: String,
    /// The value, if any.
    pub value: Option<String>,
}

impl fmt::Display for KernelParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.key),
            Some(v) if v.is_empty() || v.contains(char::is_whitespace) => {
                write!(f, "{}=\"{v}\"", self.key)
            }
            Some(v) => write!(f, "{}={v}", self.key),
        }
    }
}

/// An ordered kernel command line. A key may repeat (`systemd.mask=`);
/// [`set`](Self::set) and [`override_with`](Self::override_with) replace
/// every earlier entry of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KernelParams(Vec<KernelParam>);

impl KernelParams {
    /// An empty command line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a command line as the kernel reads it: whitespace-separated
    /// `key` or `key=value`; a value may be double-quoted (`key="a b"`),
    /// and so may a whole parameter (`"key=a b"`).
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::InvalidKernelParams {
            input: input.to_owned(),
            reason,
        };
        if input.contains(['\0', '\n']) {
            return Err(invalid("contains NUL or newline"));
        }
        let mut params = Self::new();
        let mut chars = input.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                return Ok(params);
            }
            // The kernel's own form: the whole parameter in quotes
            // (`"key=a b"`), as Kata's parser accepts too.
            if chars.next_if_eq(&'"').is_some() {
                let mut whole = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => whole.push(c),
                        None => return Err(invalid("unterminated quote")),
                    }
                }
                if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                    return Err(invalid("text after a closing quote"));
                }
                let (key, value) = match whole.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (whole, None),
                };
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(invalid("empty key, or a key with spaces"));
                }
                params.push(key, value);
                continue;
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
                if c == '"' {
                    return Err(invalid("quote in a key"));
                }
                key.push(c);
            }
            if key.is_empty() {
                return Err(invalid("empty key"));
            }
            let value = if chars.next_if_eq(&'=').is_some() {
                let mut value = String::new();
                if chars.next_if_eq(&'"').is_some() {
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some(c) => value.push(c),
                            None => return Err(invalid("unterminated quote")),
                        }
                    }
                    if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                        return Err(invalid("text after a closing quote"));
                    }
                } else {
                    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                        if c == '"' {
                            return Err(invalid("quote inside an unquoted value"));
                        }
                        value.push(c);
                    }
                }
                Some(value)
            } else {
                None
            };
            params.push(key, value);
        }
    }

    /// Appends `key[=value]`, keeping earlier entries of the key.
    pub fn push(&mut self, key: impl Into<String>, value: Option<impl Into<String>>) -> &mut Self {
        self.0.push(KernelParam {
            key: key.into(),
            value: value.map(Into::into),
        });
        self
    }

    /// Sets `key[=value]`, replacing every earlier entry of the key.
    pub fn set(&mut self, key: impl Into<String>, value: Option<impl Into<String>>) -> &mut Self {
        let key = key.into();
        self.remove(&key);
        self.push(key, value)
    }

    /// Sets `key[=value]` only if the key is absent.
    pub fn set_default(
        &mut self,
        key: impl Into<String>,
        value: Option<impl Into<String>>,
    ) -> &mut Self {
        let key = key.into();
        if !self.contains(&key) {
            self.push(key, value);
        }
        self
    }

    /// Removes every entry of `key`.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.0.retain(|p| p.key != key);
        self
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }

    /// The value of the last entry of `key` (`Some(None)` for a bare flag).
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .rev()
            .find(|p| p.key == key)
            .map(|p| p.value.as_deref())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = Option<&'a str>> + 'a {
        self.0
            .iter()
            .filter(move |p| p.key == key)
            .map(|p| p.value.as_deref())
    }

    /// Applies `other` on top: each key in `other` replaces all of this
    /// line's entries of that key; `other`'s own repeats are kept.
    pub fn override_with(&mut self, other: &KernelParams) -> &mut Self {
        for param in &other.0 {
            self.remove(&param.key);
        }
        self.0.extend(other.0.iter().cloned());
        self
    }

    /// The parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = &KernelParam> {
        self.0.iter()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KernelParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, param) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{param}")?;
        }
        Ok(())
    }
}

/// Builds the guest command line from its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelParamsBuilder {
    console: Option<String>,
    debug: bool,
    trace: bool,
    systemd: bool,
    agent: Vec<(String, String)>,
    extra: KernelParams,
}

impl Default for KernelParamsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelParamsBuilder {
    /// Base parameters with the console on the first serial port.
    pub fn new() -> Self {
        Self {
            console: Some("ttyS0".to_owned()),
            debug: false,
            trace: false,
            systemd: false,
            agent: Vec::new(),
            extra: KernelParams::new(),
        }
    }

    /// The console device (`ttyS0`), or none.
    pub fn console(mut self, console: Option<&str>) -> Self {
        self.console = console.map(str::to_owned);
        self
    }

    /// Verbose kernel and agent logs (no `quiet`, `agent.log=debug`).
    pub fn debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// Tracing: `agent.trace=true`, and systemd units are not masked.
    pub fn trace(mut self, trace: bool) -> Self {
        self.trace = trace;
        self
    }

    /// The guest image runs systemd: mask the units listed in
    /// [`SYSTEMD_MASKED_UNITS`] (unless tracing).
    pub fn systemd(mut self, systemd: bool) -> Self {
        self.systemd = systemd;
        self
    }

    /// Adds `agent.<key>=<value>` (the prefix is added when missing).
    pub fn agent(mut self, key: &str, value: impl Into<String>) -> Self {
        let key = if key.starts_with(AGENT_PREFIX) {
            key.to_owned()
        } else {
            format!("{AGENT_PREFIX}{key}")
        };
        self.agent.push((key, value.into()));
        self
    }

    /// User parameters, applied last: they override the others by key.
    pub fn extra(mut self, extra: KernelParams) -> Self {
        self.extra.override_with(&extra);
        self
    }

    /// The command line.
    pub fn build(&self) -> KernelParams {
        let mut params = KernelParams::new();
        if let Some(console) = &self.console {
            params.push("console", Some(console.as_str()));
        }
        for (key, value) in BASE {
            params.push(*key, *value);
        }
        if self.debug {
            params.push("debug", None::<&str>);
            params.set("agent.log", Some("debug"));
        } else {
            params.push("quiet", None::<&str>);
        }
        if self.trace {
            params.set("agent.trace", Some("true"));
        }
        if self.systemd {
            if self.debug {
                params.push("systemd.log_level", Some("debug"));
                params.push("systemd.log_target", Some("kmsg"));
            } else {
                params.push("systemd.show_status", Some("false"));
            }
            if !self.trace {
                for unit in SYSTEMD_MASKED_UNITS {
                    params.push("systemd.mask", Some(*unit));
                }
            }
        }
        for (key, value) in &self.agent {
            params.set(key.as_str(), Some(value.as_str()));
        }
        params.override_with(&self.extra);
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_line_is_quiet_with_serial_console() {
        let line = KernelParamsBuilder::new().build();
        assert_eq!(line.get("console"), Some(Some("ttyS0")));
        assert_eq!(line.get("panic"), Some(Some("1")));
        assert!(line.contains("quiet"));
        assert!(!line.contains("debug"));
        assert!(!line.contains("systemd.mask"));
        let text = line.to_string();
        assert!(text.starts_with("console=ttyS0 panic=1 "), "{text}");
        assert!(!text.contains("  ") && !text.ends_with(' '));
    }

    #[test]
    fn debug_and_trace_switches() {
        let line = KernelParamsBuilder::new().debug(true).trace(true).build();
        assert!(line.contains("debug") && !line.contains("quiet"));
        assert_eq!(line.get("agent.log"), Some(Some("debug")));
        assert_eq!(line.get("agent.trace"), Some(Some("true")));
    }

    #[test]
    fn systemd_masks_unless_tracing() {
        let line = KernelParamsBuilder::new().systemd(true).build();
        let masks: Vec<_> = line.get_all("systemd.mask").flatten().collect();
        assert_eq!(masks, SYSTEMD_MASKED_UNITS);
        assert!(
            masks.contains(&"systemd-journald.service") && masks.contains(&"systemd-udevd.service")
        );
        assert_eq!(line.get("systemd.show_status"), Some(Some("false")));

        let traced = KernelParamsBuilder::new().systemd(true).trace(true).build();
        assert!(!traced.contains("systemd.mask"));
        // Without systemd in the image, no systemd parameters at all.
        assert!(
            !KernelParamsBuilder::new()
                .build()
                .iter()
                .any(|p| p.key.starts_with("systemd."))
        );
    }

    #[test]
    fn agent_params_get_the_prefix_once() {
        let line = KernelParamsBuilder::new()
            .agent("log", "info")
            .agent("agent.channel", "agent.channel.0")
            .agent("log", "warn")
            .build();
        assert_eq!(
            line.get_all("agent.log").collect::<Vec<_>>(),
            [Some("warn")]
        );
        assert_eq!(line.get("agent.channel"), Some(Some("agent.channel.0")));
    }

    #[test]
    fn extras_override_defaults_by_key() {
        let extra = KernelParams::parse(
            "console=hvc0 panic=0 quiet=  foo systemd.mask=a.service systemd.mask=b.service",
        )
        .unwrap();
        let line = KernelParamsBuilder::new()
            .systemd(true)
            .extra(extra)
            .build();
        assert_eq!(line.get_all("console").collect::<Vec<_>>(), [Some("hvc0")]);
        assert_eq!(line.get_all("panic").collect::<Vec<_>>(), [Some("0")]);
        assert_eq!(line.get("quiet"), Some(Some("")));
        assert_eq!(line.get("foo"), Some(None));
        // The user's masks replace the defaults, and both of theirs are kept.
        assert_eq!(
            line.get_all("systemd.mask").flatten().collect::<Vec<_>>(),
            ["a.service", "b.service"]
        );
        // Debug set later by the user wins over the builder default too.
        let line = KernelParamsBuilder::new()
            .debug(true)
            .extra(KernelParams::parse("agent.log=error").unwrap())
            .build();
        assert_eq!(line.get("agent.log"), Some(Some("error")));
    }

    #[test]
    fn parse_and_display_round_trip_with_quotes() {
        let input = r#"root=/dev/vda  ro  init="/sbin/my init" x= y"#;
        let line = KernelParams::parse(input).unwrap();
        assert_eq!(line.get("init"), Some(Some("/sbin/my init")));
        assert_eq!(line.get("ro"), Some(None));
        assert_eq!(line.get("x"), Some(Some("")));
        let text = line.to_string();
        assert_eq!(text, r#"root=/dev/vda ro init="/sbin/my init" x="" y"#);
        assert_eq!(KernelParams::parse(&text).unwrap(), line);
        assert!(KernelParams::parse("").unwrap().is_empty());
        // A whole parameter in quotes, as the kernel (and Kata) accept.
        let quoted = KernelParams::parse(r#""init=/sbin/my init" "quiet" x=1"#).unwrap();
        assert_eq!(quoted.get("init"), Some(Some("/sbin/my init")));
        assert_eq!(quoted.get("quiet"), Some(None));
        assert_eq!(quoted.get("x"), Some(Some("1")));
    }

    #[test]
    fn parse_rejects_malformed_lines() {
        for bad in [
            "a=\"open", "=v", "a=\"x\"y", "a\nb", "a=b\"c", "k\"=v", "\"open", "\"=v\"", "\"a\"b",
        ] {
            assert!(
                matches!(
                    KernelParams::parse(bad),
                    Err(ConfigError::InvalidKernelParams { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn set_default_keeps_existing() {
        let mut line = KernelParams::parse("root=/dev/sda").unwrap();
        line.set_default("root", Some("/dev/vda"))
            .set_default("rootfstype", Some("erofs"));
        assert_eq!(line.to_string(), "root=/dev/sda rootfstype=erofs");
    }
}
