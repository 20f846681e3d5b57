//! Progress bars for the engine's `Progress` reports (indicatif), silent under `--json` or when
//! stderr is not a terminal.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use trio_engine::Progress;

/// Draws one bar per engine stage on stderr. Stages measured in bytes get a byte/rate style.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            quiet,
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(guard) = self.bar.lock() {
            if let Some(bar) = guard.as_ref() {
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
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(style_for(stage, total.is_some()));
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(old) = guard.take() {
                old.finish();
            }
            *guard = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        self.with_bar(|b| b.inc(n));
    }

    fn message(&self, msg: &str) {
        self.with_bar(|b| b.set_message(msg.to_string()));
    }

    fn finish(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(bar) = guard.take() {
                bar.finish();
            }
        }
    }

    fn warn(&self, msg: &str) {
        if self.quiet {
            return;
        }
        let line = format!("warning: {msg}");
        match self.bar.lock().ok().and_then(|g| g.clone()) {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}
