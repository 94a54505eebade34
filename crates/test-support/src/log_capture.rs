//! A logger whose records a test can read back: what the SDK said, as a
//! user reading its log would check it.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// One record: its message and its key-value pairs, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The level (`INFO`, `WARN`, ...).
    pub level: String,
    /// The message.
    pub message: String,
    /// `key=value` pairs, the record's own then its logger's.
    pub values: Vec<(String, String)>,
}

impl LogLine {
    /// The value of `key`, if the record has it.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Records every log line of the loggers made from [`LogCapture::logger`].
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl LogCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// A logger writing into this capture.
    pub fn logger(&self) -> slog::Logger {
        slog::Logger::root(
            Capture {
                lines: self.lines.clone(),
            },
            slog::o!(),
        )
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<LogLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.message == message)
            .collect()
    }
}

struct Capture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

/// Renders each value with its `Display`-like form.
struct Collect(Vec<(String, String)>);

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let mut v = String::new();
        let _ = v.write_fmt(*val);
        self.0.push((key.to_string(), v));
        Ok(())
    }
}

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = Collect(Vec::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(LogLine {
                level: record.level().as_short_str().to_owned(),
                message: record.msg().to_string(),
                values: kv.0,
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_with_their_values() {
        let capture = LogCapture::new();
        let log = capture.logger().new(slog::o!("sandbox" => "s1"));
        slog::info!(log, "boot slot taken"; "slot" => 1, "waited_ms" => 250u64);
        slog::warn!(log, "other");
        let taken = capture.with_message("boot slot taken");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].value("slot"), Some("1"));
        assert_eq!(taken[0].value("waited_ms"), Some("250"));
        assert_eq!(taken[0].value("sandbox"), Some("s1"));
        assert_eq!(taken[0].level, "INFO");
        assert_eq!(capture.lines().len(), 2);
    }
}
