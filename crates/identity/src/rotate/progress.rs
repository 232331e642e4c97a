//! How a rotation shows what it does: step lines, and while waiting a
//! progress bar (proxies done/total, time in the step). On a terminal the
//! bar is one line redrawn in place on stderr; otherwise a plain line is
//! printed when the count changes, so logs stay readable.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use super::state::Step;

/// Receives a rotation's events.
pub trait Reporter: Send {
    /// A step started, finished, or the rotation resumed.
    fn event(&mut self, line: &str);
    /// Progress of a wait: `done` of `total` proxies, `in_step` since the step began.
    fn progress(&mut self, step: Step, done: usize, total: usize, in_step: Duration);
    /// The wait ended: take the bar off the screen.
    fn clear(&mut self) {}
}

/// Discards everything (dry runs, tests).
#[derive(Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn event(&mut self, _: &str) {}
    fn progress(&mut self, _: Step, _: usize, _: usize, _: Duration) {}
}

/// Step lines on stdout; the bar on stderr.
#[derive(Debug)]
pub struct Console {
    tty: bool,
    last: Option<(Step, usize, usize)>,
    drawn: bool,
}

impl Default for Console {
    fn default() -> Self {
        Self { tty: std::io::stderr().is_terminal(), last: None, drawn: false }
    }
}

/// `[#####-----] 3/5 proxies  step 2/6  1m04s`.
pub fn bar(step: Step, done: usize, total: usize, in_step: Duration) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let secs = in_step.as_secs();
    format!("[{}{}] {done}/{total} proxies  {step}  {}m{:02}s", "#".repeat(filled), "-".repeat(WIDTH - filled), secs / 60, secs % 60)
}

impl Reporter for Console {
    fn event(&mut self, line: &str) {
        self.clear();
        println!("{line}");
    }

    fn progress(&mut self, step: Step, done: usize, total: usize, in_step: Duration) {
        let line = bar(step, done, total, in_step);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last != Some((step, done, total)) {
            let _ = writeln!(err, "{line}");
        }
        self.last = Some((step, done, total));
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shows_count_step_and_time() {
        assert_eq!(bar(Step::WaitNewLeaves, 1, 4, Duration::from_secs(64)), "[#####---------------] 1/4 proxies  step 4/6  1m04s");
        assert_eq!(bar(Step::WaitOldDropped, 0, 0, Duration::ZERO), "[####################] 0/0 proxies  step 6/6  0m00s");
    }
}
