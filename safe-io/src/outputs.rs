//! Where outputs go, so that int8kit never deletes, moves or overwrites a file it did not write:
//! single files are written through a temporary file and a rename, only over regular files
//! ([`write_atomic`]); a set of artifacts is written into a fresh staging folder beside its target and swapped
//! in whole ([`OutputDir`]), and an existing target is replaced only when it is *proven* int8kit's: its
//! manifest parses, is int8kit's format, and lists exactly the files the folder holds, with their SHA-256
//! ([`inspect`]). Anything else in the way is refused untouched, naming what is there.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file every artifact folder holds, listing its files with their SHA-256.
pub const MANIFEST: &str = "int8kit.manifest.json";
/// The manifest's `format`.
pub const MANIFEST_FORMAT: &str = "int8kit.outputs";
/// The manifest version this build writes and reads (version 1 listed names only, so it proves nothing).
pub const MANIFEST_VERSION: u64 = 2;

/// Why an output cannot be written where it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operating system refused a read or write.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An output path holds something that is not a regular file (or, for a folder, not a folder).
    #[error("{path} is {kind}: int8kit writes only regular files and folders it made; choose another output path")]
    NotRegular {
        /// The output path.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
    },
    /// An output folder is not one int8kit wrote.
    #[error(
        "{path} holds what int8kit did not write: {why}. int8kit replaces only a folder it wrote itself (its \
         {MANIFEST} lists exactly the files there, with their SHA-256), so nothing was changed; choose a new or \
         empty folder, or move these files away yourself"
    )]
    NotOwned {
        /// The output folder.
        path: PathBuf,
        /// What is there that proves it is not int8kit's.
        why: String,
    },
    /// A stop was requested ([`crate::interrupt`]) before the output was committed.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// An output would be, hold, or sit inside an input, or another output.
    #[error("{message}; nothing was written: choose another output path")]
    Clash {
        /// Which output and which input, and how they meet.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.to_path_buf(), source }
}

/// Refuses to write a file at `path` if something other than a regular file is there (a device, a FIFO, a
/// folder): replacing it by a rename would turn `/dev/null` into a file, or a folder into nothing.
pub fn check_file_target(path: &Path) -> Result<(), WriteError> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            Err(WriteError::NotRegular { path: path.to_path_buf(), kind: crate::kind_of(&meta) })
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that readers never
/// see a half-written file and a kill leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    crate::interrupt::check()?;
    check_file_target(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(path))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    // Temporary files are created private (0600); an artifact gets ordinary permissions.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io_err(path))?;
    }
    crate::interrupt::check()?;
    tmp.persist(path).map_err(|e| WriteError::Io { path: path.to_path_buf(), source: e.error })?;
    Ok(())
}

/// One file of an artifact set, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// The file's name in the folder.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: String,
    version: u64,
    files: Vec<ManifestEntry>,
}

/// What an output folder's path holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Absent,
    /// An empty folder.
    Empty,
    /// A folder int8kit wrote, proven by its manifest: these files and nothing else.
    Owned(Vec<ManifestEntry>),
}

/// The SHA-256 of a file, streamed, as lowercase hex, and its size.
fn sha256_of(path: &Path) -> Result<(u64, String), std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Proves what `target` holds: absent, an empty folder, or a folder int8kit wrote (its manifest parses, is
/// [`MANIFEST_FORMAT`] version [`MANIFEST_VERSION`], and lists exactly the regular files the folder holds,
/// with matching sizes and SHA-256). Anything else is an error naming what is there.
pub fn inspect(target: &Path) -> Result<Existing, WriteError> {
    let not_owned = |why: String| WriteError::NotOwned { path: target.to_path_buf(), why };
    let meta = match std::fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(WriteError::Io { path: target.to_path_buf(), source: e }),
    };
    if meta.file_type().is_symlink() {
        // Swapping a folder in by rename would replace the link, not the folder it points to.
        return Err(WriteError::NotRegular {
            path: target.to_path_buf(),
            kind: "a symbolic link (give the folder it points to)",
        });
    }
    if !meta.is_dir() {
        return Err(WriteError::NotRegular { path: target.to_path_buf(), kind: "not a folder" });
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(target).map_err(io_err(target))? {
        let entry = entry.map_err(io_err(target))?;
        names.push(entry.file_name());
    }
    names.sort();
    if names.is_empty() {
        return Ok(Existing::Empty);
    }
    let shown = |names: &[std::ffi::OsString]| {
        let mut list: Vec<String> = names.iter().take(3).map(|n| format!("`{}`", n.to_string_lossy())).collect();
        if names.len() > 3 {
            list.push(format!("{} more", names.len() - 3));
        }
        list.join(", ")
    };
    let manifest_path = target.join(MANIFEST);
    match std::fs::symlink_metadata(&manifest_path) {
        Err(_) => return Err(not_owned(format!("it holds {} and no {MANIFEST}", shown(&names)))),
        Ok(m) if !m.file_type().is_file() => {
            return Err(not_owned(format!("its {MANIFEST} is {}", kind_of_entry(&m))));
        }
        Ok(_) => {}
    }
    let text = crate::read_to_string(&manifest_path, crate::limits::JSON, "an output manifest")
        .map_err(|e| not_owned(format!("its {MANIFEST} cannot be read ({e})")))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| not_owned(format!("its {MANIFEST} is not JSON ({e}), so it is not int8kit's")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(MANIFEST_FORMAT) {
        return Err(not_owned(format!("its {MANIFEST} is not of the format \"{MANIFEST_FORMAT}\"")));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(MANIFEST_VERSION) => {}
        Some(1) => {
            return Err(not_owned(format!(
                "its {MANIFEST} is version 1 (an older int8kit's, names without checksums), which cannot prove \
                 the files are int8kit's"
            )))
        }
        other => {
            let shown = other.map_or_else(|| "missing".to_string(), |v| v.to_string());
            return Err(not_owned(format!(
                "its {MANIFEST} has version {shown}; this int8kit reads version {MANIFEST_VERSION}"
            )));
        }
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| not_owned(format!("its {MANIFEST} is not a valid int8kit manifest ({e})")))?;
    let mut listed: Vec<&ManifestEntry> = manifest.files.iter().collect();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in listed.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(not_owned(format!("its {MANIFEST} lists `{}` twice", pair[0].name)));
        }
    }
    for entry in &listed {
        let plain = !entry.name.is_empty()
            && entry.name != "."
            && entry.name != ".."
            && entry.name != MANIFEST
            && !entry.name.contains('/');
        if !plain {
            return Err(not_owned(format!("its {MANIFEST} lists `{}`, which is not a file name", entry.name)));
        }
    }
    for name in &names {
        let shown_name = name.to_string_lossy();
        if shown_name == MANIFEST {
            continue;
        }
        let Some(entry) = listed.iter().find(|e| std::ffi::OsStr::new(&e.name) == name.as_os_str()) else {
            return Err(not_owned(format!("it holds `{shown_name}`, which its {MANIFEST} does not list")));
        };
        let path = target.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if !meta.file_type().is_file() {
            return Err(not_owned(format!("`{shown_name}` is {}", kind_of_entry(&meta))));
        }
        if meta.len() != entry.bytes {
            return Err(not_owned(format!("`{shown_name}` changed since int8kit wrote it (its size differs)")));
        }
        let (_, sha) = sha256_of(&path).map_err(io_err(&path))?;
        if sha != entry.sha256 {
            return Err(not_owned(format!("`{shown_name}` changed since int8kit wrote it (its SHA-256 differs)")));
        }
    }
    if let Some(missing) = listed.iter().find(|e| !names.iter().any(|n| n.as_os_str() == e.name.as_str())) {
        return Err(not_owned(format!("its {MANIFEST} lists `{}`, which is not there", missing.name)));
    }
    Ok(Existing::Owned(manifest.files))
}

fn kind_of_entry(meta: &std::fs::Metadata) -> &'static str {
    if meta.file_type().is_symlink() {
        "a symbolic link"
    } else {
        crate::kind_of(meta)
    }
}

/// Refuses an artifact folder that [`OutputDir`] would refuse, without creating anything: for a check before
/// a long run.
pub fn check_output_dir(target: &Path) -> Result<(), WriteError> {
    inspect(target).map(|_| ())
}

/// The steps of [`OutputDir::commit`], in order: where a fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Listing and hashing the staged files.
    Hash,
    /// Writing the manifest into the staging folder.
    Manifest,
    /// Proving again what the target holds (it may have changed while the run worked).
    Recheck,
    /// Swapping the staged folder and the target.
    Swap,
    /// Proving that what was swapped out is what was proven before (else it is swapped back).
    Verify,
    /// Removing the old set's files, one by one, and its folder.
    Remove,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [Step::Hash, Step::Manifest, Step::Recheck, Step::Swap, Step::Verify, Step::Remove];
}

/// A set of artifacts being written: files go into a fresh staging folder beside the target, and [`commit`]
/// swaps the folder in whole, so a reader of the target sees the old set or the new one, never a mixture,
/// and a refusal, an error or a kill at any point leaves the target as it was.
///
/// [`commit`]: OutputDir::commit
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    existing: Existing,
    committed: bool,
    discard_on_failure: bool,
}

impl OutputDir {
    /// Proves what the target holds and creates the staging folder. The target must be absent, an empty
    /// folder, or a folder int8kit wrote ([`inspect`]); anything else is refused untouched.
    pub fn new(target: &Path) -> Result<OutputDir, WriteError> {
        let target = if target.as_os_str().is_empty() { Path::new(".") } else { target };
        let existing = inspect(target)?;
        // A target such as "." or "out/.." has no usable name for a sibling: resolve it.
        let target = match target.file_name() {
            Some(_) => target.to_path_buf(),
            None => target.canonicalize().map_err(io_err(target))?,
        };
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        // A fresh, unique name: never a folder that was there before.
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.int8kit-staging-"))
            .tempdir_in(&parent)
            .map_err(io_err(&parent))?
            .keep();
        Ok(OutputDir { target, staging, existing, committed: false, discard_on_failure: false })
    }

    /// Where to write the files (plain files only: the manifest lists no folders).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// When this set is dropped without a commit, also removes the set the target held (int8kit's own
    /// files, proven again by their SHA-256), so that a failed release gate leaves no stale verdict. A
    /// refusal before this is called, or a kill, leaves the target as it was.
    pub fn discard_existing_on_failure(&mut self) {
        self.discard_on_failure = true;
    }

    /// Writes the manifest and swaps the staged folder in; the old set, proven int8kit's, is then removed.
    pub fn commit(self) -> Result<(), WriteError> {
        self.commit_with(&mut |_| Ok(()))
    }

    /// [`commit`](OutputDir::commit), with `fault` called before each [`Step`]; an error it returns fails
    /// that step as an I/O error would (for tests of what every failure leaves behind).
    pub fn commit_with(mut self, fault: &mut dyn FnMut(Step) -> std::io::Result<()>) -> Result<(), WriteError> {
        let staging = self.staging.clone();
        let target = self.target.clone();
        crate::interrupt::check()?;
        fault(Step::Hash).map_err(io_err(&staging))?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&staging).map_err(io_err(&staging))? {
            let entry = entry.map_err(io_err(&staging))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if !meta.file_type().is_file() {
                return Err(WriteError::NotRegular { path, kind: "not a regular file in an artifact set" });
            }
            let (bytes, sha256) = sha256_of(&path).map_err(io_err(&path))?;
            files.push(ManifestEntry { name: entry.file_name().to_string_lossy().into_owned(), bytes, sha256 });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        fault(Step::Manifest).map_err(io_err(&staging))?;
        let manifest = Manifest { format: MANIFEST_FORMAT.into(), version: MANIFEST_VERSION, files };
        let mut json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        json.push(b'\n');
        write_atomic(&staging.join(MANIFEST), &json)?;
        fault(Step::Recheck).map_err(io_err(&target))?;
        let existing = inspect(&target)?;
        if existing != self.existing && existing != Existing::Absent && existing != Existing::Empty {
            return Err(WriteError::NotOwned {
                path: target.clone(),
                why: "another int8kit run replaced it while this one worked".into(),
            });
        }
        fault(Step::Swap).map_err(io_err(&target))?;
        let old = match existing {
            Existing::Absent => {
                rename(&staging, &target, rustix::fs::RenameFlags::NOREPLACE).map_err(io_err(&target))?;
                self.committed = true;
                return Ok(());
            }
            Existing::Empty | Existing::Owned(_) => {
                rename(&staging, &target, rustix::fs::RenameFlags::EXCHANGE).map_err(io_err(&target))?;
                // The staging name now holds the old set.
                staging.clone()
            }
        };
        // From here the new set is in place; the old one, at the staging name, is proven once more before
        // anything of it is removed: a file planted between the proof and the swap must survive.
        let verified = fault(Step::Verify).map_err(io_err(&old)).and_then(|()| inspect(&old));
        match verified {
            Ok(found) if found == existing => {}
            Ok(_) | Err(_) => {
                // Swap back: the target holds what it held, the staging name the new set (removed on drop).
                rename(&staging, &target, rustix::fs::RenameFlags::EXCHANGE).map_err(io_err(&target))?;
                return Err(match verified {
                    Err(e) => e,
                    Ok(_) => WriteError::NotOwned {
                        path: target.clone(),
                        why: "it changed while int8kit swapped the new set in".into(),
                    },
                });
            }
        }
        self.committed = true;
        // Removing the old set is best effort: the new set is committed whatever happens now, and anything
        // left is int8kit's own, under a hidden name beside the target.
        if fault(Step::Remove).is_ok() {
            if let Existing::Owned(entries) = &existing {
                remove_listed(&old, entries);
            }
            let _ = std::fs::remove_dir(&old);
        }
        Ok(())
    }
}

/// Removes the files a proven manifest lists and the manifest; never anything else.
fn remove_listed(dir: &Path, entries: &[ManifestEntry]) {
    for entry in entries {
        let _ = std::fs::remove_file(dir.join(&entry.name));
    }
    let _ = std::fs::remove_file(dir.join(MANIFEST));
}

fn rename(from: &Path, to: &Path, flags: rustix::fs::RenameFlags) -> std::io::Result<()> {
    match rustix::fs::renameat_with(rustix::fs::CWD, from, rustix::fs::CWD, to, flags) {
        Ok(()) => Ok(()),
        // A file system without renameat2's flags: a plain rename replaces only an empty folder, and an
        // exchange is emulated by two renames through a fresh name.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if flags.contains(rustix::fs::RenameFlags::EXCHANGE) {
                let aside = to.with_file_name(format!(
                    ".{}.int8kit-aside-{}",
                    to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    std::process::id()
                ));
                if std::fs::symlink_metadata(&aside).is_ok() {
                    return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, aside.display().to_string()));
                }
                std::fs::rename(to, &aside)?;
                if let Err(e) = std::fs::rename(from, to) {
                    let _ = std::fs::rename(&aside, to);
                    return Err(e);
                }
                std::fs::rename(&aside, from)
            } else {
                std::fs::rename(from, to)
            }
        }
        Err(e) => Err(e.into()),
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // The staging folder holds only what this run wrote; a folder someone put inside it stays.
        if let Ok(entries) = std::fs::read_dir(&self.staging) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.staging);
        if self.discard_on_failure {
            // Only a set proven int8kit's now, and the very set proven at the start.
            if let (Ok(Existing::Owned(now)), Existing::Owned(before)) = (inspect(&self.target), &self.existing) {
                if &now == before {
                    remove_listed(&self.target, &now);
                    let _ = std::fs::remove_dir(&self.target);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every file under `dir` (relative path -> bytes), folders as `None`.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.insert(rel, None);
                    stack.push(path);
                } else {
                    out.insert(rel, Some(std::fs::read(&path).unwrap()));
                }
            }
        }
        out
    }

    fn write_set(target: &Path, files: &[(&str, &str)]) {
        let set = OutputDir::new(target).unwrap();
        for (name, text) in files {
            std::fs::write(set.path().join(name), text).unwrap();
        }
        set.commit().unwrap();
    }

    #[test]
    fn a_set_is_swapped_in_whole_and_a_failed_one_leaves_the_target_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        write_set(&target, &[("a.txt", "1")]);
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "1");
        assert!(matches!(inspect(&target).unwrap(), Existing::Owned(files) if files.len() == 1));
        // A second run replaces the set: a.txt of the first run is gone.
        write_set(&target, &[("b.txt", "2")]);
        assert!(!target.join("a.txt").exists() && target.join("b.txt").is_file());
        // A run that fails leaves the previous set, and no staging folder.
        let before = tree(tmp.path());
        let failed = OutputDir::new(&target).unwrap();
        std::fs::write(failed.path().join("c.txt"), "3").unwrap();
        drop(failed);
        assert_eq!(tree(tmp.path()), before);
        // A failed gate discards its own earlier verdict, and only that.
        let mut verdict = OutputDir::new(&target).unwrap();
        verdict.discard_existing_on_failure();
        drop(verdict);
        assert!(!target.exists());
    }

    #[test]
    fn only_a_folder_whose_manifest_proves_every_file_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        write_set(&target, &[("a.txt", "1"), ("b.txt", "2")]);
        let manifest = std::fs::read_to_string(target.join(MANIFEST)).unwrap();
        type Plant = fn(&Path);
        let cases: [(&str, Plant, &str); 9] = [
            ("a foreign file", |t| std::fs::write(t.join("notes.txt"), "mine").unwrap(), "`notes.txt`"),
            ("a sub-folder", |t| std::fs::create_dir_all(t.join("src")).unwrap(), "`src`"),
            ("a changed file", |t| std::fs::write(t.join("a.txt"), "9").unwrap(), "SHA-256 differs"),
            ("a grown file", |t| std::fs::write(t.join("a.txt"), "12").unwrap(), "size differs"),
            ("a removed file", |t| std::fs::remove_file(t.join("b.txt")).unwrap(), "not there"),
            ("an empty manifest", |t| std::fs::write(t.join(MANIFEST), "").unwrap(), "not JSON"),
            (
                "another format",
                |t| std::fs::write(t.join(MANIFEST), r#"{"format":"x","version":2,"files":[]}"#).unwrap(),
                "not of the format",
            ),
            (
                "a version 1 manifest",
                |t| {
                    let v1 = r#"{"format":"int8kit.outputs","version":1,"files":["a.txt","b.txt"]}"#;
                    std::fs::write(t.join(MANIFEST), v1).unwrap()
                },
                "version 1",
            ),
            (
                "a symlinked manifest",
                |t| {
                    std::fs::rename(t.join(MANIFEST), t.join("m")).unwrap();
                    std::os::unix::fs::symlink(t.join("m"), t.join(MANIFEST)).unwrap();
                },
                "symbolic link",
            ),
        ];
        for (what, plant, says) in cases {
            let _ = std::fs::remove_dir_all(&target);
            write_set(&target, &[("a.txt", "1"), ("b.txt", "2")]);
            plant(&target);
            let before = tree(tmp.path());
            let err = OutputDir::new(&target).err().unwrap_or_else(|| panic!("{what} accepted")).to_string();
            assert!(err.contains(says) && err.contains("int8kit did not write"), "{what}: {err}");
            assert_eq!(tree(tmp.path()), before, "{what}: something changed");
        }
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join(MANIFEST), &manifest).unwrap();
        assert!(OutputDir::new(&target).is_err(), "a manifest copied into another folder proves nothing");
    }

    /// A fault at each step of the swap, as an error (then dropped) and as a kill (what is on disk at that
    /// moment): the victims around the target are untouched, and the target is the old set byte for byte
    /// (or, once swapped, the whole new set).
    #[test]
    fn a_fault_at_any_step_of_the_swap_loses_nothing() {
        for step in Step::ALL {
            for start_empty in [false, true] {
                let tmp = tempfile::tempdir().unwrap();
                let target = tmp.path().join("out");
                std::fs::write(tmp.path().join("victim.txt"), "beside").unwrap();
                std::fs::create_dir(tmp.path().join("src")).unwrap();
                std::fs::write(tmp.path().join("src/main.rs"), "code").unwrap();
                if start_empty {
                    std::fs::create_dir(&target).unwrap();
                } else {
                    write_set(&target, &[("model.qdq.onnx", "old"), ("ranges.json", "{}")]);
                }
                let old = tree(&target);
                let victims = |t: &BTreeMap<PathBuf, Option<Vec<u8>>>| -> Vec<(PathBuf, Option<Vec<u8>>)> {
                    t.iter()
                        .filter(|(p, _)| !p.to_string_lossy().starts_with("out"))
                        .filter(|(p, _)| !p.to_string_lossy().starts_with(".out.int8kit-"))
                        .map(|(p, v)| (p.clone(), v.clone()))
                        .collect()
                };
                let victims_before = victims(&tree(tmp.path()));
                let set = OutputDir::new(&target).unwrap();
                std::fs::write(set.path().join("model.qdq.onnx"), "new").unwrap();
                let mut killed_state = None;
                let result = set.commit_with(&mut |s| {
                    if s == step {
                        // A kill now: what the disk holds is what a killed process leaves.
                        killed_state = Some((tree(&target), victims(&tree(tmp.path()))));
                        return Err(std::io::Error::other("injected"));
                    }
                    Ok(())
                });
                let (at_kill, victims_at_kill) = killed_state.expect("the step was reached");
                assert_eq!(victims_at_kill, victims_before, "{step:?}: a victim changed at the kill");
                let swapped = matches!(step, Step::Verify | Step::Remove);
                if swapped {
                    assert_eq!(at_kill.get(Path::new("model.qdq.onnx")), Some(&Some(b"new".to_vec())), "{step:?}");
                } else {
                    assert_eq!(at_kill, old, "{step:?}: the target changed before the swap");
                }
                assert_eq!(victims(&tree(tmp.path())), victims_before, "{step:?}: a victim changed");
                if step == Step::Remove {
                    assert!(result.is_ok(), "{step:?}: the new set is committed");
                } else {
                    assert!(result.is_err(), "{step:?}");
                    assert_eq!(tree(&target), old, "{step:?}: the failed commit changed the target");
                }
            }
        }
    }

    #[test]
    fn a_file_planted_during_the_run_is_never_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        write_set(&target, &[("a.txt", "1")]);
        let set = OutputDir::new(&target).unwrap();
        std::fs::write(set.path().join("b.txt"), "2").unwrap();
        std::fs::write(target.join("planted.txt"), "mine").unwrap();
        let err = set.commit().unwrap_err().to_string();
        assert!(err.contains("planted.txt"), "{err}");
        assert_eq!(std::fs::read_to_string(target.join("planted.txt")).unwrap(), "mine");
        // Planted between the recheck and the swap: the old set is proven again after the swap, and swapped
        // back.
        std::fs::remove_file(target.join("planted.txt")).unwrap();
        let set = OutputDir::new(&target).unwrap();
        std::fs::write(set.path().join("b.txt"), "2").unwrap();
        let t = target.clone();
        let err = set
            .commit_with(&mut |s| {
                if s == Step::Swap {
                    std::fs::write(t.join("late.txt"), "mine").unwrap();
                }
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("late.txt"), "{err}");
        assert_eq!(std::fs::read_to_string(target.join("late.txt")).unwrap(), "mine");
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "1");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out"], "no staging folder is left");
    }

    /// The manifest format is pinned: a change of its bytes is a format change (FORMATS.md).
    #[test]
    fn the_manifest_matches_its_golden_file() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        write_set(&target, &[("ranges.json", "{}\n"), ("model.qdq.onnx", "onnx")]);
        let written = std::fs::read_to_string(target.join(MANIFEST)).unwrap();
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/manifest.json");
        if std::env::var_os("INT8KIT_BLESS").is_some() {
            std::fs::write(golden, &written).unwrap();
        }
        assert_eq!(written, std::fs::read_to_string(golden).unwrap(), "INT8KIT_BLESS=1 rewrites {golden}");
    }

    #[test]
    fn devices_fifos_folders_and_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check_file_target(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        assert!(check_file_target(tmp.path()).unwrap_err().to_string().contains("a folder"));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(OutputDir::new(&link).err().unwrap().to_string().contains("symbolic link"));
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        assert!(OutputDir::new(&tmp.path().join("f")).err().unwrap().to_string().contains("not a folder"));
    }
}
