//! Progress of a long tool (synth, train, eval) on standard error: a bar on a terminal;
//! in a log (not a terminal), a plain line at every tenth of the way, never a `\r`.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// How far a tool has come, out of a known total.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    /// On a terminal: the bar.
    bar: Option<ProgressBar>,
    /// In a log: the next tenth to note.
    next_tenth: u64,
    started: Instant,
}

impl Progress {
    /// `total` steps of `what` (`"frames"`, `"steps"`).
    pub fn new(what: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {prefix} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            bar
        });
        Progress { what, total, done: 0, bar, next_tenth: 1, started: Instant::now() }
    }

    /// `n` more steps done.
    pub fn advance(&mut self, n: u64) {
        self.set(self.done + n, String::new());
    }

    /// `done` steps so far, with a note (a loss, a rate) shown beside the count.
    pub fn set(&mut self, done: u64, note: String) {
        self.done = done.min(self.total);
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done);
                bar.set_message(note);
            }
            None => {
                while self.total > 0 && self.done * 10 >= self.next_tenth * self.total && self.next_tenth <= 10 {
                    eprintln!(
                        "{}/{} {} {note} ({:.0} s)",
                        self.done,
                        self.total,
                        self.what,
                        self.started.elapsed().as_secs_f64()
                    );
                    self.next_tenth += 1;
                }
            }
        }
    }

    /// Done: the bar is cleared away.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_log_each_tenth_is_noted_once() {
        let mut progress = Progress { bar: None, ..Progress::new("frames", 20) };
        for _ in 0..20 {
            progress.advance(1);
        }
        assert_eq!(progress.next_tenth, 11, "ten notes, one per tenth");
        progress.advance(5);
        assert_eq!(progress.done, 20, "never past the total");
    }
}
