//! `int8kit setup`: install the pinned ONNX Runtime where int8kit looks for it.

use anyhow::Context;
use runtime::Flavor;

use crate::Outcome;

/// `int8kit setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Install onnxruntime-gpu (for --device cuda; needs CUDA 13 and cuDNN 9) instead of the CPU build.
    #[arg(long)]
    pub gpu: bool,
}

/// Installs into `<data dir>/onnxruntime[-gpu]-<version>` with pip (once) and says which library a run would
/// load: ORT_DYLIB_PATH or the Python environment's onnxruntime come first when present.
pub fn run(args: &SetupArgs) -> anyhow::Result<Outcome> {
    let flavor = if args.gpu { Flavor::Gpu } else { Flavor::Cpu };
    let dir = runtime::data_dir()?.join(flavor.folder_name());
    eprintln!("installing {} {} into {} (once)...", flavor.package(), flavor.version(), dir.display());
    let installed = runtime::install(&dir, flavor).context("int8kit setup")?;
    println!("{} {}: {}", flavor.package(), flavor.version(), installed.display());
    let used = runtime::locate(flavor)?;
    if used != installed {
        println!("note: runs load {} (found first: ORT_DYLIB_PATH or this Python environment)", used.display());
    }
    Ok(Outcome::Success)
}
