use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decode image: {message} (use --on-bad-image skip to leave such files out)")]
    BadImage { path: PathBuf, message: String },
    #[error("{path}: image is {width}x{height}, smaller than the recipe's size {want_w}x{want_h} with resize = \"none\"; use resize = \"shorter\" or \"exact\"")]
    TooSmall { path: PathBuf, width: u32, height: u32, want_w: u32, want_h: u32 },
    #[error("recipe {origin}: {message}")]
    Recipe { origin: String, message: String },
    #[error("{dir}: no JPEG or PNG images found")]
    Empty { dir: PathBuf },
    #[error("{dir}: {message}")]
    Labels { dir: PathBuf, message: String },
    #[error("{path}: resize failed: {message}")]
    Resize { path: PathBuf, message: String },
}
