//! Progress output: one line per step, with its duration.

use std::time::Instant;

pub struct Step {
    name: String,
    started: Instant,
}

/// Announces a step; call `done` when it finished.
pub fn step(name: impl Into<String>) -> Step {
    let name = name.into();
    eprintln!("\x1b[1m==>\x1b[0m {name}");
    Step {
        name,
        started: Instant::now(),
    }
}

impl Step {
    pub fn done(self) {
        eprintln!(
            "    {} ({:.1}s)",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

pub fn info(msg: &str) {
    eprintln!("    {msg}");
}

pub fn fail(msg: &str) {
    eprintln!("\x1b[1;31merror:\x1b[0m {msg}");
}
