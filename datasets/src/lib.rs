//! Image folders, labels, preprocessing recipes and batches.
//!
//! Everything between an image file on disk and the float tensor a model is fed. Preprocessing follows
//! PIL/torchvision (`Resize`, `CenterCrop`, `ToTensor`, `Normalize`) to within 1/255 per pixel, checked against
//! reference values produced by Python and committed under `testdata/`.

#![forbid(unsafe_code)]

mod batches;
mod error;
mod feed;
mod folder;
mod preprocess;
mod recipe;
pub mod tensors;

pub use batches::{Batch, BatchSource, BatchStream, OnBadImage, Rebatched, ShapeKey, StreamOptions};
pub use error::DatasetError;
pub use feed::Feed;
pub use folder::{hold_out_priority, Dataset, ImageItem, ListSha256, MAX_CLASSES};
pub use preprocess::{apply_geometry, load_pixels, preprocess_file, write_tensor, Pixels};
pub use recipe::{Channels, InputType, Interpolation, Layout, Preset, Recipe, ResizeMode, MAX_SIDE, MAX_SIZES};
pub use tensors::{read_npz, ArrayData, NamedArray};
