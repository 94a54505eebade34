//! The undo stack of a multi-step operation: each completed step pushes
//! how to take it back; a failure runs them in reverse.

use std::future::Future;
use std::pin::Pin;

use slog::{Logger, warn};

use crate::error::Error;

type UndoFn = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send>;

/// Undo actions, run last-in first-out.
pub(crate) struct UndoStack {
    steps: Vec<(&'static str, UndoFn)>,
    logger: Logger,
}

impl UndoStack {
    pub(crate) fn new(logger: Logger) -> Self {
        UndoStack {
            steps: Vec::new(),
            logger,
        }
    }

    /// Registers how to undo the step `name`, which just completed.
    pub(crate) fn push<F, Fut>(&mut self, name: &'static str, undo: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.steps.push((name, Box::new(move || Box::pin(undo()))));
    }

    /// The operation succeeded: keep everything.
    pub(crate) fn commit(mut self) {
        self.steps.clear();
    }

    /// Undoes every registered step, last first. Failures are logged and
    /// do not stop the unwinding; they are returned, by step, for the
    /// caller's error (the operation's own error stays the one reported).
    pub(crate) async fn unwind(mut self) -> Vec<(&'static str, Error)> {
        let mut failed = Vec::new();
        while let Some((name, undo)) = self.steps.pop() {
            if let Err(e) = undo().await {
                warn!(self.logger, "undo failed"; "step" => name, "error" => crate::error::chain(&e));
                failed.push((name, e));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn unwinds_in_reverse_and_past_failures() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut undo = UndoStack::new(Logger::root(slog::Discard, slog::o!()));
        for name in ["a", "b", "c"] {
            let log = log.clone();
            undo.push(name, move || async move {
                log.lock().unwrap().push(name);
                if name == "b" {
                    return Err(Error::NotFound {
                        id: "xx".parse().unwrap(),
                    });
                }
                Ok(())
            });
        }
        undo.unwind().await;
        assert_eq!(*log.lock().unwrap(), ["c", "b", "a"]);
    }

    #[tokio::test]
    async fn commit_runs_nothing() {
        let ran = Arc::new(Mutex::new(false));
        let mut undo = UndoStack::new(Logger::root(slog::Discard, slog::o!()));
        let r = ran.clone();
        undo.push("a", move || async move {
            *r.lock().unwrap() = true;
            Ok(())
        });
        undo.commit();
        assert!(!*ran.lock().unwrap());
    }
}
