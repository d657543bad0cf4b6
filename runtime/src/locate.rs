//! Where the ONNX Runtime library is, and installing it into the user's data directory.
//!
//! No path is compiled into the binary: a `cargo install`ed or pip-installed int8kit finds the library from
//! where it runs. Lookup order ([`locate`]): `ORT_DYLIB_PATH`; the `onnxruntime` package of the Python
//! environment whose `bin/` holds the running binary (a wheel's `int8kit` sits beside `python`, its
//! `onnxruntime` dependency in that environment's `site-packages`); `<data dir>/onnxruntime-<version>/`,
//! where [`install`] puts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{RuntimeError, ORT_GPU_VERSION, ORT_VERSION};

/// Which ONNX Runtime build: the CPU wheel (`onnxruntime`) or the CUDA one (`onnxruntime-gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `onnxruntime` from PyPI.
    Cpu,
    /// `onnxruntime-gpu` from PyPI (CUDA 13, cuDNN 9).
    Gpu,
}

impl Flavor {
    /// The PyPI package name.
    pub fn package(self) -> &'static str {
        match self {
            Flavor::Cpu => "onnxruntime",
            Flavor::Gpu => "onnxruntime-gpu",
        }
    }

    /// The pinned version.
    pub fn version(self) -> &'static str {
        match self {
            Flavor::Cpu => ORT_VERSION,
            Flavor::Gpu => ORT_GPU_VERSION,
        }
    }

    /// The folder name under the data directory: `onnxruntime-<version>` or `onnxruntime-gpu-<version>`.
    pub fn folder_name(self) -> String {
        format!("{}-{}", self.package(), self.version())
    }

    /// Whether a `capi` folder holds this build (the GPU build ships the CUDA provider beside the library).
    fn accepts(self, capi: &Path) -> bool {
        match self {
            Flavor::Cpu => true,
            Flavor::Gpu => capi.join("libonnxruntime_providers_cuda.so").is_file(),
        }
    }
}

/// `$XDG_DATA_HOME/int8kit`, else `$HOME/.local/share/int8kit` (relative values are ignored, as the XDG
/// specification says).
pub fn data_dir() -> Result<PathBuf, RuntimeError> {
    let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute("XDG_DATA_HOME") {
        return Ok(xdg.join("int8kit"));
    }
    absolute("HOME").map(|home| home.join(".local").join("share").join("int8kit")).ok_or(RuntimeError::NoDataDir)
}

/// The library inside a folder that pip installed the wheel into (`--target` or a `site-packages`).
fn library_in(packages: &Path, flavor: Flavor) -> Option<PathBuf> {
    let capi = packages.join("onnxruntime").join("capi");
    if !flavor.accepts(&capi) {
        return None;
    }
    let pinned = capi.join(format!("libonnxruntime.so.{}", flavor.version()));
    if pinned.is_file() {
        return Some(pinned);
    }
    // Another release in a Python environment: take its versioned library (the name the wheels ship).
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The `site-packages` folders of the Python environment whose `bin/` holds `exe`.
fn site_packages_of(exe: &Path) -> Vec<PathBuf> {
    let Some(prefix) = exe.parent().and_then(Path::parent) else { return Vec::new() };
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python")))
            .map(|p| p.join("site-packages"))
            .filter(|p| p.is_dir())
            .collect();
        pythons.sort();
        out.extend(pythons);
    }
    out
}

/// The library of the Python environment the running binary belongs to, with a note of what was seen.
fn from_python_environment(flavor: Flavor) -> (Option<PathBuf>, String) {
    let Ok(exe) = std::env::current_exe() else { return (None, "the running program's path is unknown".into()) };
    let sites = site_packages_of(&exe);
    if sites.is_empty() {
        return (None, format!("{} is not in a Python environment's bin/", exe.display()));
    }
    for site in &sites {
        if let Some(lib) = library_in(site, flavor) {
            return (Some(lib), String::new());
        }
    }
    let listed: Vec<String> = sites.iter().map(|s| s.display().to_string()).collect();
    (None, format!("no {} package in {}", flavor.package(), listed.join(", ")))
}

/// The library to load for `flavor`, without loading it.
pub fn locate(flavor: Flavor) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(RuntimeError::EnvPathMissing(p)) };
    }
    let (found, python) = from_python_environment(flavor);
    if let Some(lib) = found {
        return Ok(lib);
    }
    let data = match data_dir() {
        Ok(dir) => {
            let installed = dir.join(flavor.folder_name());
            if let Some(lib) = library_in(&installed, flavor) {
                return Ok(lib);
            }
            installed.display().to_string()
        }
        Err(e) => e.to_string(),
    };
    match flavor {
        Flavor::Cpu => Err(RuntimeError::NotFound { flavor, python, data }),
        Flavor::Gpu => Err(RuntimeError::GpuNotFound(data)),
    }
}

/// The pip command that [`install`] runs for `flavor` into `dir`.
pub fn install_command_line(dir: &Path, flavor: Flavor) -> String {
    format!("python3 -m pip install --no-deps --target {} {}=={}", dir.display(), flavor.package(), flavor.version())
}

/// Installs the pinned wheel of `flavor` into `dir` (the wheel's files land in `dir/onnxruntime/...`) unless
/// it is there already, and returns the library path. pip writes into a staging folder beside `dir` that is
/// renamed into place, so an interrupted install leaves no half-installed library behind.
pub fn install(dir: &Path, flavor: Flavor) -> Result<PathBuf, RuntimeError> {
    if let Some(lib) = library_in(dir, flavor) {
        return Ok(lib);
    }
    let fail = |message: String| RuntimeError::Install {
        package: format!("{}=={}", flavor.package(), flavor.version()),
        dir: dir.to_path_buf(),
        command: install_command_line(dir, flavor),
        message,
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    let staging = parent.join(format!(".staging-{}-{}", flavor.folder_name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
        .arg(&staging)
        .arg(format!("{}=={}", flavor.package(), flavor.version()))
        .status()
        .map_err(|e| fail(format!("cannot start python3: {e}")))?;
    if !status.success() || library_in(&staging, flavor).is_none() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(fail(format!("pip exited with {status}")));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).map_err(|e| fail(e.to_string()))?;
    library_in(dir, flavor).ok_or_else(|| fail("the library is missing after the install".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn a_binary_in_a_python_environment_finds_that_environments_onnxruntime() {
        let env = tempfile::tempdir().unwrap();
        let exe = env.path().join("bin/int8kit");
        touch(&exe);
        assert!(site_packages_of(&exe).is_empty());
        let site = env.path().join("lib/python3.11/site-packages");
        touch(&site.join("onnxruntime/capi/libonnxruntime.so.1.31.0"));
        touch(&site.join(format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}")));
        assert_eq!(site_packages_of(&exe), vec![site.clone()]);
        let lib = library_in(&site, Flavor::Cpu).unwrap();
        assert!(lib.ends_with(format!("libonnxruntime.so.{ORT_VERSION}")), "{}", lib.display());
        // The CPU wheel is not the GPU build.
        assert_eq!(library_in(&site, Flavor::Gpu), None);
        touch(&site.join("onnxruntime/capi/libonnxruntime_providers_cuda.so"));
        assert!(library_in(&site, Flavor::Gpu).is_some());
    }

    #[test]
    fn another_release_in_the_environment_is_taken_when_the_pinned_one_is_absent() {
        let site = tempfile::tempdir().unwrap();
        touch(&site.path().join("onnxruntime/capi/libonnxruntime.so.1.40.1"));
        let lib = library_in(site.path(), Flavor::Cpu).unwrap();
        assert!(lib.ends_with("libonnxruntime.so.1.40.1"));
    }

    #[test]
    fn the_not_found_error_names_all_three_places_and_the_setup_command() {
        let e = RuntimeError::NotFound { flavor: Flavor::Cpu, python: "X".into(), data: "/d/int8kit".into() };
        let text = e.to_string();
        for part in ["ORT_DYLIB_PATH", "Python environment", "/d/int8kit", "int8kit setup", "onnxruntime==1.32.0"] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }
}
