//! Where outputs go, so that they never clobber anything and never leave a mixture: single files are only
//! written over regular files and never over an input; a set of artifacts is written into a staging folder
//! beside the target and swapped in whole ([`OutputDir`]).

use std::path::{Path, PathBuf};

use crate::GraphError;

/// The file every artifact folder holds, listing its files: a folder with it is one int8kit wrote, and may be
/// replaced by a new run; a non-empty folder without it is refused.
pub const MANIFEST: &str = "int8kit.manifest.json";

/// Refuses to write a file at `path` if something other than a regular file is there (a device, a FIFO, a
/// folder): replacing it by a rename would turn `/dev/null` into a file, or a folder into nothing.
pub fn check_file_target(path: &Path) -> Result<(), GraphError> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            Err(GraphError::NotRegular { path: path.to_path_buf(), kind: safe_io::kind_of(&meta) })
        }
        _ => Ok(()),
    }
}

/// Refuses an output path that is one of the inputs, or (for a folder that will be replaced) holds one.
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<(), GraphError> {
    let Ok(out_real) = out.canonicalize() else { return Ok(()) }; // not there yet: it cannot be an input
    for input in inputs {
        let Ok(real) = input.canonicalize() else { continue };
        if real == out_real || real.starts_with(&out_real) {
            return Err(GraphError::OutputIsInput { out: out.to_path_buf(), input: input.to_path_buf() });
        }
    }
    Ok(())
}

/// Refuses an artifact folder that [`OutputDir`] would refuse, without creating anything: for a check before a
/// long run.
pub fn check_output_dir(target: &Path) -> Result<(), GraphError> {
    let Ok(meta) = std::fs::symlink_metadata(target) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        // Swapping a folder in by rename would replace the link, not the folder it points to.
        return Err(GraphError::NotRegular {
            path: target.to_path_buf(),
            kind: "a symbolic link (give the folder it points to)",
        });
    }
    if !meta.is_dir() {
        return Err(GraphError::NotRegular { path: target.to_path_buf(), kind: "not a folder" });
    }
    let io = |source| GraphError::Read { path: target.to_path_buf(), source };
    let mut entries = std::fs::read_dir(target).map_err(io)?.peekable();
    if entries.peek().is_some() && !target.join(MANIFEST).is_file() {
        return Err(GraphError::ForeignFolder { path: target.to_path_buf() });
    }
    Ok(())
}

/// A set of artifacts being written: files go into a staging folder beside the target, and [`commit`]
/// swaps the folder in whole, so a reader of the target sees the old set or the new one, never a mixture.
/// Dropped without a commit, the staging folder is removed and the target is as it was (or absent, after
/// [`retire_existing`]).
///
/// [`commit`]: OutputDir::commit
/// [`retire_existing`]: OutputDir::retire_existing
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    retired: Option<PathBuf>,
    committed: bool,
}

fn sibling(target: &Path, what: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    target.with_file_name(format!(".{name}.int8kit-{what}-{}", std::process::id()))
}

impl OutputDir {
    /// Checks the target and creates the staging folder. The target must be absent, an empty folder, or a
    /// folder an earlier int8kit run wrote (it holds [`MANIFEST`]); anything else is refused untouched.
    pub fn new(target: &Path) -> Result<OutputDir, GraphError> {
        let target = if target.as_os_str().is_empty() { Path::new(".") } else { target };
        check_output_dir(target)?;
        // A target such as "." or "out/.." has no usable name for a sibling: resolve it.
        let target = match target.file_name() {
            Some(_) => target.to_path_buf(),
            None => target.canonicalize().map_err(|source| GraphError::Read { path: target.to_path_buf(), source })?,
        };
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| GraphError::Write { path: parent.into(), source })?;
        }
        let staging = sibling(&target, "staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(|source| GraphError::Write { path: staging.clone(), source })?;
        Ok(OutputDir { target, staging, retired: None, committed: false })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves an existing target aside now, so that while this run works, and if it fails, the target holds
    /// nothing: for a verdict, an old report beside a new run's state would be a stale verdict.
    pub fn retire_existing(&mut self) -> Result<(), GraphError> {
        if self.target.exists() {
            let retired = sibling(&self.target, "old");
            let _ = std::fs::remove_dir_all(&retired);
            std::fs::rename(&self.target, &retired)
                .map_err(|source| GraphError::Write { path: self.target.clone(), source })?;
            self.retired = Some(retired);
        }
        Ok(())
    }

    /// Writes the manifest (the staged files' names, sorted) and swaps the staged folder in.
    pub fn commit(mut self) -> Result<(), GraphError> {
        let io = |source| GraphError::Read { path: self.staging.clone(), source };
        let mut files: Vec<String> = std::fs::read_dir(&self.staging)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        files.sort();
        let mut manifest = String::from("{\"format\":\"int8kit.outputs\",\"version\":1,\"files\":[");
        for (i, f) in files.iter().enumerate() {
            manifest.push_str(if i == 0 { "\"" } else { ",\"" });
            manifest.push_str(&f.replace('\\', "\\\\").replace('"', "\\\""));
            manifest.push('"');
        }
        manifest.push_str("]}\n");
        crate::write_atomic(&self.staging.join(MANIFEST), manifest.as_bytes())?;
        let write_err = |source| GraphError::Write { path: self.target.clone(), source };
        if self.target.exists() {
            // Swap both names at once where the file system can; else move the old one aside first.
            let exchanged = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &self.staging,
                rustix::fs::CWD,
                &self.target,
                rustix::fs::RenameFlags::EXCHANGE,
            );
            if exchanged.is_ok() {
                // The staging name now holds the old set.
                let _ = std::fs::remove_dir_all(&self.staging);
                self.committed = true;
                return Ok(());
            }
            let retired = sibling(&self.target, "old");
            let _ = std::fs::remove_dir_all(&retired);
            std::fs::rename(&self.target, &retired).map_err(write_err)?;
            self.retired = Some(retired);
        }
        std::fs::rename(&self.staging, &self.target).map_err(write_err)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
        if let Some(retired) = &self.retired {
            let _ = std::fs::remove_dir_all(retired);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_swapped_in_whole_and_a_failed_one_leaves_the_target_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        let first = OutputDir::new(&target).unwrap();
        std::fs::write(first.path().join("a.txt"), "1").unwrap();
        first.commit().unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "1");
        assert!(target.join(MANIFEST).is_file());
        // A second run replaces the set: a.txt of the first run is gone.
        let second = OutputDir::new(&target).unwrap();
        std::fs::write(second.path().join("b.txt"), "2").unwrap();
        second.commit().unwrap();
        assert!(!target.join("a.txt").exists() && target.join("b.txt").is_file());
        // A run that fails leaves the previous set, and no staging folder.
        let failed = OutputDir::new(&target).unwrap();
        std::fs::write(failed.path().join("c.txt"), "3").unwrap();
        drop(failed);
        assert!(target.join("b.txt").is_file() && !target.join("c.txt").exists());
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out"]);
        // A retired target is gone while the run works and after it fails.
        let mut verdict = OutputDir::new(&target).unwrap();
        verdict.retire_existing().unwrap();
        assert!(!target.exists());
        drop(verdict);
        assert!(!target.exists());
    }

    #[test]
    fn folders_with_foreign_files_devices_and_inputs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("precious.txt"), "x").unwrap();
        let err = OutputDir::new(tmp.path()).err().unwrap().to_string();
        assert!(err.contains("int8kit did not write"), "{err}");
        assert!(tmp.path().join("precious.txt").is_file());
        let err = check_file_target(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        assert!(check_file_target(tmp.path()).unwrap_err().to_string().contains("a folder"));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(OutputDir::new(&link).err().unwrap().to_string().contains("symbolic link"));
        let model = tmp.path().join("m.onnx");
        std::fs::write(&model, "m").unwrap();
        assert!(check_not_input(&model, &[&model]).is_err());
        assert!(check_not_input(tmp.path(), &[&model]).is_err(), "a folder holding an input");
        assert!(check_not_input(&tmp.path().join("new.hist"), &[&model]).is_ok());
    }
}
