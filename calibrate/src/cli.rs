//! Command-line pieces shared by int8kit's binaries (calibrate, analyze, xtask).

use std::path::PathBuf;

use datasets::{Preset, Recipe};
use indicatif::{ProgressBar, ProgressStyle};

/// `--recipe R.toml | --preset P`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RecipeArgs {
    /// Preprocessing recipe (TOML with an [input] table; see README).
    #[arg(long, value_name = "R.toml")]
    pub recipe: Option<PathBuf>,
    /// Named preprocessing: imagenet or clip.
    #[arg(long, value_name = "P")]
    pub preset: Option<Preset>,
}

impl RecipeArgs {
    pub fn load(&self) -> Result<Recipe, datasets::DatasetError> {
        match (&self.recipe, self.preset) {
            (Some(path), _) => Recipe::load(path),
            (None, Some(p)) => Ok(Recipe::preset(p)),
            (None, None) => Err(datasets::DatasetError::Recipe {
                origin: "command line".into(),
                message: "give --recipe R.toml or --preset imagenet|clip".into(),
            }),
        }
    }
}

/// Logs to stderr through `tracing`; `RUST_LOG` overrides the level. `--quiet` keeps only errors.
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A progress bar over `total` items of `unit`, with a rate; hidden when `quiet`.
pub fn progress_bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The exit status of int8kit's binaries: 0 on success; 2 with the error chain on stderr otherwise.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
