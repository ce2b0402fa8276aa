//! The case-file mode: JSON cases (one a line) from a file or stdin, one JSON answer a line
//! out, and a summary when cases say what they expect.

use l7_rules::check;
use l7_rules::engine::Engine;
use std::io::{Read, Write};
use std::process::ExitCode;

/// Reads the cases from `src` (`-` for stdin). `Err` when they cannot be read.
pub fn read(src: &str) -> Result<String, String> {
    let mut text = String::new();
    let read = if src == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(src).map(|t| text = t)
    };
    read.map_err(|e| format!("cannot read cases {src}: {e}"))?;
    Ok(text)
}

/// Runs and prints every case. Exit status: 2 if a case could not be run, 1 if one failed.
pub fn run(engine: &Engine, text: &str) -> ExitCode {
    let run = check::run_cases(engine, text);
    let mut out = std::io::stdout().lock();
    for line in &run.lines {
        let _ = writeln!(out, "{line}");
    }
    if run.any_expect {
        let _ = writeln!(
            out,
            "{} passed, {} failed",
            run.passed,
            run.failed + run.errors
        );
    }
    if run.errors > 0 {
        for line in run.lines.iter().filter(|l| l.get("error").is_some()) {
            eprintln!("ward-check: case error: {line}");
        }
        return ExitCode::from(2);
    }
    if run.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
