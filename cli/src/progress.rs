//! Progress bars for the engine's `Progress` reports (indicatif), silent under `--json` or when
//! stderr is not a terminal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use trio_engine::Progress;

/// Draws one bar per engine stage on stderr. Stages measured in bytes get a byte/rate style.
///
/// Training runs some stages at once on different threads (the fused model's alignment beside
/// the other models), so each thread gets its own bar; reports from a thread that started no
/// stage (a worker helping with one) go to the newest bar.
pub struct Bars {
    multi: MultiProgress,
    /// Open bars by the thread that started them, with a start counter to find the newest.
    bars: Mutex<HashMap<ThreadId, (u64, ProgressBar)>>,
    started: AtomicU64,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
            quiet,
        }
    }

    /// The calling thread's bar, or the newest one.
    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(bars) = self.bars.lock() {
            let bar = bars
                .get(&std::thread::current().id())
                .or_else(|| bars.values().max_by_key(|(n, _)| *n));
            if let Some((_, bar)) = bar {
                f(bar);
            }
        }
    }
}

fn style_for(stage: &str, known_total: bool) -> ProgressStyle {
    let template = match (
        stage.contains("bytes")
            || stage.starts_with("download")
            || stage.starts_with("verify")
            || stage.starts_with("extract"),
        known_total,
    ) {
        (true, true) => {
            "{spinner} {prefix:<28} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        }
        (true, false) => "{spinner} {prefix:<28} {bytes} {binary_bytes_per_sec} {msg}",
        (false, true) => "{spinner} {prefix:<28} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        (false, false) => "{spinner} {prefix:<28} {pos} {per_sec} {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: Option<u64>) {
        if self.quiet {
            return;
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        let bar = self.multi.add(bar);
        bar.set_style(style_for(stage, total.is_some()));
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut bars) = self.bars.lock() {
            if let Some((_, old)) = bars.insert(std::thread::current().id(), (n, bar)) {
                old.finish();
            }
        }
    }

    fn advance(&self, n: u64) {
        self.with_bar(|b| b.inc(n));
    }

    fn message(&self, msg: &str) {
        self.with_bar(|b| b.set_message(msg.to_string()));
    }

    fn finish(&self) {
        if let Ok(mut bars) = self.bars.lock() {
            if let Some((_, bar)) = bars.remove(&std::thread::current().id()) {
                bar.finish();
            }
        }
    }

    fn warn(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let line = format!("warning: {msg}");
        // A hidden bar (stderr not a terminal) drops printed lines.
        if self.multi.is_hidden() || self.multi.println(&line).is_err() {
            eprintln!("{line}");
        }
    }
}
