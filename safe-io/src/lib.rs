//! The edges where user files come in and tabular text goes out.
//!
//! Reading: a FIFO, a device or a folder given where a file is expected would hang a read or read forever,
//! and a huge file read whole would exhaust memory, so every file a user names is checked to be a regular
//! file and no larger than a limit for its kind before it is opened ([`read`], [`read_to_string`],
//! [`open`]). Writing: a CSV cell that starts like a formula (`=`, `+`, `-`, `@`, tab, carriage return) is
//! run by spreadsheets that open the file, so such text is neutralised ([`csv_text`]). Outputs: files are
//! written atomically and only over regular files, artifact folders are replaced only when proven
//! int8kit's ([`outputs`]), and no output may be, hold or sit inside an input or another output
//! ([`run_files`]).

#![forbid(unsafe_code)]

pub mod interrupt;
pub mod outputs;
pub mod run_files;

pub use outputs::{check_file_target, check_output_dir, write_atomic, OutputDir, WriteError, MANIFEST};
pub use run_files::{Kind, RunFiles};

use std::fs::File;
use std::path::{Path, PathBuf};

/// Size limits, by kind of file: generous for real inputs, small enough that reading one whole is safe.
pub mod limits {
    /// An ONNX model file (protobuf itself stops at 2 GiB).
    pub const MODEL: u64 = 2 << 30;
    /// A `.hist` file (about 30 KB per tensor at most).
    pub const HIST: u64 = 2 << 30;
    /// An image file.
    pub const IMAGE: u64 = 256 << 20;
    /// A recipe, precision list, class list or calibration cache.
    pub const TEXT: u64 = 16 << 20;
    /// A JSON report or sensitivity ranking.
    pub const JSON: u64 = 256 << 20;
    /// A `.npy` array of zero-shot prototypes.
    pub const ARRAY: u64 = 1 << 30;
}

/// Why a file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file is not there or cannot be opened.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The path names something other than a regular file.
    #[error("{path} is not a regular file ({kind}); int8kit reads only regular files")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than its kind allows.
    #[error("{path} is {size} bytes, more than the {limit} bytes allowed for {what}; is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// What kind of file was expected.
        what: &'static str,
    },
    /// The file is not UTF-8 text.
    #[error("{path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// What kind of non-regular file `meta` describes, for messages ("a FIFO", "a folder", ...).
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks that `path` is a regular file (symlinks followed) of at most `limit` bytes, and returns its size.
pub fn check(path: &Path, limit: u64, what: &'static str) -> Result<u64, ReadError> {
    let meta = std::fs::metadata(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size: meta.len(), limit, what });
    }
    Ok(meta.len())
}

/// Opens a checked regular file for reading.
pub fn open(path: &Path, limit: u64, what: &'static str) -> Result<File, ReadError> {
    check(path, limit, what)?;
    File::open(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })
}

/// The bytes of a checked regular file. The read itself is bounded too, in case the file grows meanwhile.
pub fn read(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let size = check(path, limit, what)?;
    let file = File::open(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, limit, what });
    }
    Ok(bytes)
}

/// The text of a checked regular file.
pub fn read_to_string(path: &Path, limit: u64, what: &'static str) -> Result<String, ReadError> {
    String::from_utf8(read(path, limit, what)?).map_err(|_| ReadError::NotText { path: path.to_path_buf() })
}

/// `text` as a CSV cell that spreadsheets show rather than run: a leading `=`, `+`, `-`, `@`, tab or carriage
/// return gets a `'` in front (OWASP's advice for CSV injection). Numbers are written by the callers as
/// numbers and are not passed through here.
pub fn csv_text(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "x = 1").unwrap();
        assert_eq!(read_to_string(&file, 100, "a recipe").unwrap(), "x = 1");
        let err = read(&file, 3, "a recipe").unwrap_err().to_string();
        assert!(err.contains("5 bytes, more than the 3 bytes allowed for a recipe"), "{err}");
        assert!(read(dir.path(), 100, "a recipe").unwrap_err().to_string().contains("a folder"));
        assert!(read(Path::new("/dev/zero"), 100, "a recipe").unwrap_err().to_string().contains("character device"));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read(&fifo, 100, "a recipe").unwrap_err().to_string().contains("a FIFO"));
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert!(read_to_string(&file, 100, "a recipe").unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn formula_prefixes_are_neutralised() {
        assert_eq!(csv_text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        for t in ["+1", "-x", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_text(t).starts_with('\''), "{t:?}");
        }
        assert_eq!(csv_text("/blocks.0/fc1/MatMul"), "/blocks.0/fc1/MatMul");
        assert_eq!(csv_text(""), "");
    }
}
