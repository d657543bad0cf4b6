//! The one place that knows every input and every output of a run ([`RunFiles`]): every command declares
//! its files here, and [`RunFiles::check`] refuses, before any work, an output that is, holds or sits inside
//! an input or another output, by canonical path and by inode.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::outputs::{check_file_target, check_output_dir, WriteError};

/// What a declared path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An input file (recipe, precision list, .hist, ...).
    File,
    /// An ONNX model: its external data files are inputs too.
    Model,
    /// An input folder of samples (images, `.npz`): an output inside it would be read as a sample or a
    /// class by the next run.
    Samples,
    /// An output file.
    OutFile,
    /// An output folder, replaced whole.
    OutFolder,
}

/// One declared path: the flag that named it, the path, what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The flag (`--model`, `--out`, ...), for messages.
    pub flag: String,
    /// The path as given.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
}

impl Declared {
    fn is_output(&self) -> bool {
        matches!(self.kind, Kind::OutFile | Kind::OutFolder)
    }
}

/// Every input and output of one run.
#[derive(Debug, Clone, Default)]
pub struct RunFiles {
    declared: Vec<Declared>,
}

/// Where a path really is: its canonical form (the nearest existing ancestor resolved, the rest appended)
/// and, when it exists, its device and inode.
struct Located {
    real: PathBuf,
    inode: Option<(u64, u64)>,
    is_dir: bool,
}

fn locate(path: &Path) -> Located {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    let meta = std::fs::metadata(&absolute).ok();
    let inode = meta.as_ref().map(|m| (m.dev(), m.ino()));
    let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
    // Resolve the longest existing prefix; the rest is taken as written, `..` folded lexically.
    let mut rest = Vec::new();
    let mut head = absolute.clone();
    let real = loop {
        if let Ok(real) = head.canonicalize() {
            break real;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                head = parent.to_path_buf();
            }
            _ => break head,
        }
    };
    let mut real = real;
    for part in rest.into_iter().rev() {
        match Path::new(&part).components().next() {
            Some(Component::ParentDir) => {
                real.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => real.push(part),
        }
    }
    Located { real, inode, is_dir }
}

impl RunFiles {
    /// No files yet.
    pub fn new() -> RunFiles {
        RunFiles::default()
    }

    /// Declares a path the run reads or writes.
    pub fn add(&mut self, flag: &str, path: &Path, kind: Kind) -> &mut RunFiles {
        self.declared.push(Declared { flag: flag.to_string(), path: path.to_path_buf(), kind });
        self
    }

    /// Declares a path when there is one (an optional flag).
    pub fn add_some(&mut self, flag: &str, path: Option<&Path>, kind: Kind) -> &mut RunFiles {
        if let Some(path) = path {
            self.add(flag, path, kind);
        }
        self
    }

    /// Everything declared, in order.
    pub fn declared(&self) -> &[Declared] {
        &self.declared
    }

    /// Refuses, before any work, an output that:
    /// - is an input (the same canonical path, or the same inode: a hard link or a symlink),
    /// - holds an input (an output folder is replaced whole),
    /// - sits inside an input folder (a folder of samples would read it next time), or
    /// - is, holds or sits inside another output;
    ///
    /// and an output file over something that is not a regular file, or an output folder int8kit cannot prove
    /// its own. A model's external data files are inputs too: `model_files` lists them (model and data files)
    /// and is asked only when an output lies in the model's folder.
    pub fn check(&self, model_files: &dyn Fn(&Path) -> Result<Vec<PathBuf>, String>) -> Result<(), WriteError> {
        let outputs: Vec<(&Declared, Located)> =
            self.declared.iter().filter(|d| d.is_output()).map(|d| (d, locate(&d.path))).collect();
        if outputs.is_empty() {
            return Ok(());
        }
        let mut inputs: Vec<(Declared, Located)> = Vec::new();
        for d in self.declared.iter().filter(|d| !d.is_output()) {
            let here = locate(&d.path);
            if d.kind == Kind::Model {
                let folder = here.real.parent().map(Path::to_path_buf).unwrap_or_default();
                if outputs.iter().any(|(_, o)| o.real.starts_with(&folder)) && here.inode.is_some() {
                    let files = model_files(&d.path).map_err(|message| WriteError::Clash {
                        message: format!("cannot list the files of {} {}: {message}", d.flag, d.path.display()),
                    })?;
                    for file in files.into_iter().filter(|f| f != &d.path) {
                        let declared =
                            Declared { flag: format!("{} (external data)", d.flag), path: file, kind: Kind::File };
                        let located = locate(&declared.path);
                        inputs.push((declared, located));
                    }
                }
            }
            inputs.push((d.clone(), here));
        }
        let name = |d: &Declared| format!("{} {}", d.flag, d.path.display());
        for (i, (out, o)) in outputs.iter().enumerate() {
            for (input, x) in &inputs {
                let same = o.real == x.real || (o.inode.is_some() && o.inode == x.inode);
                let message = if same {
                    Some(format!("the output {} is the input {}: it would be overwritten", name(out), name(input)))
                } else if x.real.starts_with(&o.real) {
                    Some(format!(
                        "the output {} holds the input {}, and it would be replaced whole: move the input out of it",
                        name(out),
                        name(input)
                    ))
                } else if (x.is_dir || input.kind == Kind::Samples) && o.real.starts_with(&x.real) {
                    Some(format!(
                        "the output {} lies inside the input folder {}: a later run would read it as samples (or a \
                         class)",
                        name(out),
                        name(input)
                    ))
                } else {
                    None
                };
                if let Some(message) = message {
                    return Err(WriteError::Clash { message });
                }
            }
            for (other, p) in outputs.iter().skip(i + 1) {
                if o.real == p.real || o.real.starts_with(&p.real) || p.real.starts_with(&o.real) {
                    let how = if o.real == p.real { "is" } else { "overlaps" };
                    return Err(WriteError::Clash {
                        message: format!("the output {} {how} the output {}", name(out), name(other)),
                    });
                }
            }
        }
        for (out, _) in &outputs {
            match out.kind {
                Kind::OutFile => check_file_target(&out.path)?,
                _ => check_output_dir(&out.path)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_data(path: &Path) -> Result<Vec<PathBuf>, String> {
        Ok(vec![path.to_path_buf()])
    }

    #[test]
    fn an_output_may_not_be_hold_or_sit_inside_an_input_or_another_output() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let model = t.join("m.onnx");
        std::fs::write(&model, "m").unwrap();
        std::fs::write(t.join("m.data"), "d").unwrap();
        std::fs::create_dir_all(t.join("val/cat")).unwrap();
        std::fs::write(t.join("val/cat/1.png"), "p").unwrap();
        std::fs::create_dir_all(t.join("out")).unwrap();
        std::fs::write(t.join("out/precision.toml"), "").unwrap();
        std::os::unix::fs::symlink(&model, t.join("alias.onnx")).unwrap();
        std::fs::hard_link(&model, t.join("hard.onnx")).unwrap();
        let with_data = |path: &Path| -> Result<Vec<PathBuf>, String> {
            Ok(vec![path.to_path_buf(), path.with_file_name("m.data")])
        };
        let run = |outs: &[(&str, PathBuf, Kind)]| {
            let mut files = RunFiles::new();
            files.add("--model", &model, Kind::Model).add("--val", &t.join("val"), Kind::Samples).add(
                "--precision",
                &t.join("out/precision.toml"),
                Kind::File,
            );
            for (flag, path, kind) in outs {
                files.add(flag, path, *kind);
            }
            files.check(&with_data).map_err(|e| e.to_string())
        };
        let cases: [(&str, PathBuf, Kind, &str); 8] = [
            ("--partial-out", model.clone(), Kind::OutFile, "is the input --model"),
            ("--partial-out", t.join("alias.onnx"), Kind::OutFile, "is the input --model"),
            ("--partial-out", t.join("hard.onnx"), Kind::OutFile, "is the input --model"),
            ("--partial-out", t.join("m.data"), Kind::OutFile, "--model (external data)"),
            ("--partial-out", t.join("val/cat/1.png"), Kind::OutFile, "inside the input folder --val"),
            ("--out", t.join("out"), Kind::OutFolder, "holds the input --precision"),
            ("--out", t.join("val/report"), Kind::OutFolder, "inside the input folder --val"),
            ("--out", t.join("val/../val/cat/new/x"), Kind::OutFolder, "inside the input folder --val"),
        ];
        for (flag, path, kind, says) in cases {
            let err = run(&[(flag, path.clone(), kind)]).expect_err(&path.display().to_string());
            assert!(err.contains(says), "{}: {err}", path.display());
        }
        let err =
            run(&[("--out", t.join("new"), Kind::OutFolder), ("--partial-out", t.join("new/p.json"), Kind::OutFile)])
                .unwrap_err();
        assert!(err.contains("overlaps the output --partial-out"), "{err}");
        run(&[("--out", t.join("new"), Kind::OutFolder), ("--partial-out", t.join("p.json"), Kind::OutFile)]).unwrap();
        // Without an output in the model's folder, the model is never opened.
        let mut files = RunFiles::new();
        files.add("--model", &model, Kind::Model).add("--out", Path::new("/nonexistent-int8kit/x"), Kind::OutFolder);
        files.check(&|_| Err("opened".into())).unwrap();
        let mut files = RunFiles::new();
        files.add("--model", &model, Kind::Model).add("--out", &t.join("fresh"), Kind::OutFolder);
        files.check(&no_data).unwrap();
    }
}
