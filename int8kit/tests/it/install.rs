//! The installed product: `cargo install` puts an `int8kit` binary in a fresh prefix, which finds nothing of
//! the checkout. Without ONNX Runtime it says where it looked and what to run; after `int8kit setup` into a
//! temporary data directory it quantizes a fixture from another directory, exactly as the built binary does.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::text;

/// `cargo install --path int8kit --root <prefix>`, sharing the workspace's build folder so that nothing is
/// compiled twice.
fn cargo_install(prefix: &Path) -> PathBuf {
    let root = test_support::root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["install", "--locked", "--offline", "--quiet", "--path"])
        .arg(root.join("int8kit"))
        .arg("--root")
        .arg(prefix)
        .arg("--target-dir")
        .arg(root.join("target"))
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo install failed: {}", text(&o));
    prefix.join("bin/int8kit")
}

/// The installed binary, run from `cwd` with ONNX Runtime only where `data` points (no ORT_DYLIB_PATH).
fn installed(bin: &Path, cwd: &Path, data: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin)
        .current_dir(cwd)
        .env_remove("ORT_DYLIB_PATH")
        .env("XDG_DATA_HOME", data)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cargo_installed_binary_sets_up_onnxruntime_and_quantizes_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, data, work) = (tmp.path().join("prefix"), tmp.path().join("data"), tmp.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    let bin = cargo_install(&prefix);

    let o = installed(&bin, &work, &data, &["--version".as_ref()]);
    assert_eq!(text(&o).trim(), format!("int8kit {}", env!("CARGO_PKG_VERSION")));

    let m = test_support::model("fmnist_resnet_opset13.onnx");
    let (images, recipe) = (test_support::calib_dir(), test_support::recipe_path());
    let quantize: Vec<&std::ffi::OsStr> = vec![
        "quantize".as_ref(),
        "--model".as_ref(),
        m.as_os_str(),
        "--images".as_ref(),
        images.as_os_str(),
        "--recipe".as_ref(),
        recipe.as_os_str(),
        "--limit".as_ref(),
        "100".as_ref(),
        "--quiet".as_ref(),
        "--out".as_ref(),
        "int8".as_ref(),
    ];
    // No ONNX Runtime yet: exit 2, naming the three places and the command to run.
    let o = installed(&bin, &work, &data, &quantize);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let says = text(&o);
    for part in ["ORT_DYLIB_PATH", "Python environment", "int8kit setup", &data.join("int8kit").display().to_string()] {
        assert!(says.contains(part), "'{part}' missing from: {says}");
    }
    assert!(!work.join("int8").exists(), "a failed run left output");

    let o = installed(&bin, &work, &data, &["setup".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lib = data.join("int8kit/onnxruntime-1.32.0/onnxruntime/capi/libonnxruntime.so.1.32.0");
    assert!(lib.is_file(), "setup did not install {}: {}", lib.display(), text(&o));
    // Twice is fine: the second call finds it.
    assert_eq!(installed(&bin, &work, &data, &["setup".as_ref()]).status.code(), Some(0));

    let o = installed(&bin, &work, &data, &quantize);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The same artifacts as the binary built in the workspace, run with the checkout's ONNX Runtime.
    let reference = tmp.path().join("reference");
    let mut args = quantize.clone();
    *args.last_mut().unwrap() = reference.as_os_str();
    let o = Command::new(env!("CARGO_BIN_EXE_int8kit")).args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for f in ["model.qdq.onnx", "ranges.json", "ranges.csv"] {
        let a = std::fs::read(work.join("int8").join(f)).unwrap();
        assert_eq!(a, std::fs::read(reference.join(f)).unwrap(), "{f} differs");
    }
}
