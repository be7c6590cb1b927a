//! Waiting for a condition with a deadline (never a bare sleep standing in for a check).

use std::time::{Duration, Instant};

/// Polls `cond` every `every` until it returns `Some`, or fails after `timeout` with `what`.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}
