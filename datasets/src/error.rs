//! What can go wrong between an image folder and a batch; every error names the file or folder.

use std::path::PathBuf;

/// Errors reading image folders, images and recipes.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// `--shard I/N` does not name a part of the list.
    #[error("{root}: --shard {index}/{count}: shards are numbered 1 to N, and N may not exceed the {samples} samples")]
    Shard {
        /// The folder.
        root: PathBuf,
        /// The part asked for (1-based).
        index: usize,
        /// The parts the list was to be split into.
        count: usize,
        /// Samples in the list.
        samples: usize,
    },
    /// A stop was requested (`safe_io::interrupt`): the stream ended at a batch boundary.
    #[error(transparent)]
    Interrupted(#[from] safe_io::interrupt::Interrupted),
    /// A file could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {source}")]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// An image decoded to zero pixels.
    #[error("{path}: the image has no pixels")]
    NoPixels {
        /// The image file.
        path: PathBuf,
    },
    /// An image is smaller than a crop-only recipe needs.
    #[error("{path}: image is {width}x{height}, smaller than the recipe's size {want_w}x{want_h} with resize = \"none\"; use resize = \"shorter\" or \"exact\"")]
    TooSmall {
        /// The image file.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The recipe's width.
        want_w: u32,
        /// The recipe's height.
        want_h: u32,
    },
    /// A recipe is malformed or inconsistent.
    #[error("recipe {origin}: {message}")]
    Recipe {
        /// The recipe file, or where the recipe came from.
        origin: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// An `.npz` sample cannot be used.
    #[error("{path}: {message}")]
    Tensors {
        /// The `.npz` file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A folder holds both images and `.npz` samples.
    #[error(
        "{dir}: holds both images ({image}) and .npz tensor samples ({npz}); a folder feeds one kind: move one \
         of them to a folder of its own"
    )]
    Mixed {
        /// The folder.
        dir: PathBuf,
        /// One of its images.
        image: PathBuf,
        /// One of its `.npz` files.
        npz: PathBuf,
    },
    /// A folder holds no sample.
    #[error("{dir}: no images (PNG, JPEG, WebP, BMP, TIFF or GIF) or .npz tensor samples found{found}")]
    Empty {
        /// The folder.
        dir: PathBuf,
        /// What it holds instead, if anything (`, only other files such as ...`), or nothing.
        found: String,
    },
    /// A labelled folder's classes cannot be worked out.
    #[error("{dir}: {message}")]
    Labels {
        /// The folder.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A symbolic link leads back into a folder being walked.
    #[error("{path}: a symbolic link loops back to a folder above it; remove the link or point at another folder")]
    Loop {
        /// The link.
        path: PathBuf,
    },
    /// The pixel buffer did not fit its dimensions (a bug: please report it).
    #[error("{path}: pixel buffer does not match the image size: {source}")]
    Buffer {
        /// The image file.
        path: PathBuf,
        /// The resizer's error.
        source: fast_image_resize::ImageBufferError,
    },
    /// Resampling failed.
    #[error("{path}: resize failed: {source}")]
    Resize {
        /// The image file.
        path: PathBuf,
        /// The resizer's error.
        source: fast_image_resize::ResizeError,
    },
}
