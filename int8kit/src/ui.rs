//! Progress bars and logging for long work; both silenced by `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};

/// Logs to stderr through `tracing`; `RUST_LOG` overrides the level. `--quiet` keeps only errors.
pub fn init_logging(quiet: bool) {
    // onnxruntime=info: the one plain line about a cuDNN fallback (runtime::log_onnxruntime); ONNX Runtime
    // itself passes on warnings and errors only.
    let default = if quiet { "error" } else { "warn,onnxruntime=info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only on a terminal: logs piped into a CI log or a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// A progress bar over items of `unit` with a rate, labelled `prefix`; hidden when `quiet`. Its length is
/// set by the first progress report.
pub fn progress_bar(prefix: &'static str, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

/// A progress callback `(done, total)` that drives `bar`.
pub fn reporter<T: TryInto<u64> + Copy>(bar: &ProgressBar) -> impl FnMut(T, T) + '_ {
    move |done, total| {
        bar.set_length(total.try_into().unwrap_or(0));
        bar.set_position(done.try_into().unwrap_or(0));
    }
}

/// A share as a percentage, or "n/a (no labels)" for a Top-1 measured without labels.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a (no labels)".into(), |v| format!("{:.2} %", 100.0 * v))
}

/// A signed change in percentage points, or "n/a" without labels.
pub fn points(pp: Option<f64>) -> String {
    pp.map_or_else(|| "n/a".into(), |v| format!("{v:+.2} pp"))
}
