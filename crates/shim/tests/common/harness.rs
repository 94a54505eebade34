//! A small test runner for the scenarios (`harness = false`): one
//! containerd for the whole binary, scenarios one after another (they
//! boot VMs on a 2-core host), a filter from the command line as `cargo
//! test -- NAME` gives it, and libtest's closing line.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

/// A scenario: a name and its body.
pub struct Scenario<E> {
    /// Its name.
    pub name: &'static str,
    /// Its body; an error or a panic fails it.
    pub run: fn(&E) -> anyhow::Result<()>,
}

/// Runs the scenarios selected by the command line's free arguments
/// (substrings of their names; none selects all) with the environment
/// `setup` makes, once, and only if one is selected.
pub fn run<E>(scenarios: &[Scenario<E>], setup: impl FnOnce() -> anyhow::Result<E>) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for s in scenarios {
            println!("{}: test", s.name);
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Scenario<E>> = scenarios
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    if selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let env = match catch_unwind(AssertUnwindSafe(setup)) {
        Ok(Ok(env)) => env,
        Ok(Err(e)) => return setup_failed(&format!("{e:#}"), selected.len()),
        Err(panic) => return setup_failed(&panic_text(&panic), selected.len()),
    };
    let mut failed = Vec::new();
    for s in &selected {
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| (s.run)(&env)));
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(panic) => Some(panic_text(&panic)),
        };
        match error {
            None => println!(
                "test {} ... ok ({:.1} s)",
                s.name,
                t.elapsed().as_secs_f64()
            ),
            Some(e) => {
                println!(
                    "test {} ... FAILED ({:.1} s)",
                    s.name,
                    t.elapsed().as_secs_f64()
                );
                failed.push((s.name, e));
            }
        }
    }
    drop(env);
    if !failed.is_empty() {
        println!("\nfailures:");
        for (name, e) in &failed {
            println!("\n---- {name} ----\n{e}");
        }
    }
    let passed = selected.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        scenarios.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn setup_failed(e: &str, count: usize) -> ExitCode {
    println!("\nsetup FAILED: {e}");
    println!(
        "\ntest result: FAILED. 0 passed; {count} failed; 0 ignored; 0 measured; 0 filtered out\n"
    );
    ExitCode::FAILURE
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
