//! Progress: a bar on a terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts completed messages and shows them.
#[derive(Clone)]
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
}

impl Progress {
    /// Starts showing progress towards `total` messages (0 when unknown).
    pub fn start(label: &str, total: u64, quiet: bool) -> Progress {
        let progress = Progress {
            done: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(tokio::sync::Notify::new()),
        };
        if quiet {
            return progress;
        }
        let done = progress.done.clone();
        let stop = progress.stop.clone();
        let label = label.to_owned();
        let terminal = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let bar = terminal.then(|| {
                let bar = if total > 0 {
                    ProgressBar::new(total)
                } else {
                    ProgressBar::new_spinner()
                };
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(label.clone());
                bar
            });
            let started = Instant::now();
            let period = if terminal {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    () = tokio::time::sleep(period) => {}
                }
                let n = done.load(Ordering::Relaxed);
                match &bar {
                    Some(bar) => bar.set_position(n),
                    None => eprintln!(
                        "{label}: {n} messages after {:.0} s",
                        started.elapsed().as_secs_f64()
                    ),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        progress
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.stop.notify_one();
    }
}
