//! Progress of a long phase (tracing, lowering, XLA compiling): on a terminal a spinner with
//! the elapsed time; otherwise a plain line when it starts and one every 30 seconds while it
//! runs, so a log shows that a ten-minute compile is alive.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Phase {
    bar: Option<ProgressBar>,
    started: Instant,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Phase {
    /// Starts showing `what` (e.g. "XLA compiling train-step for v5e:16x16").
    pub(crate) fn start(what: &str) -> Phase {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            return Phase { bar: Some(bar), started, stop, ticker: None };
        }
        eprintln!("{what} ...");
        let (what, flag) = (what.to_string(), stop.clone());
        let ticker = std::thread::spawn(move || {
            let mut said = 0u64;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let secs = started.elapsed().as_secs();
                if secs >= said + 30 {
                    said = secs - secs % 30;
                    eprintln!("{what}: {said} s so far");
                }
            }
        });
        Phase { bar: None, started, stop, ticker: Some(ticker) }
    }

    /// Ends the phase; returns how long it took.
    pub(crate) fn done(mut self) -> Duration {
        self.finish();
        self.started.elapsed()
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.finish();
    }
}
