//! Image folders: flat (calibration) or labelled (one sub-folder per class).

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::DatasetError;

/// Mixed into the seed of [`hold_out_priority`] (and of the shuffle before `.hist` version 8).
const HOLD_OUT_STREAM: u64 = 0x686f_6c64_6f75_7421;

/// The hold-out priority of the sample at `index` (0-based, in list or stream order) under `seed`: the
/// samples of lowest priority are held back ([`Dataset::hold_out`]). SplitMix64's output for that position of
/// the seed's stream: a function of the position alone, so a stream needs no look-ahead.
pub fn hold_out_priority(seed: u64, index: u64) -> u64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = (seed ^ HOLD_OUT_STREAM).wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixed into the seed of [`Dataset::deal`]'s shuffle.
const DEAL_STREAM: u64 = 0x6465_616c_7369_7a65;

/// One image file and, in a labelled folder, its class index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// The file.
    pub path: PathBuf,
    /// Class index in a labelled folder.
    pub label: Option<usize>,
}

/// A list of images in a fixed, sorted order.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder.
    pub root: PathBuf,
    /// The images, sorted by path.
    pub items: Vec<ImageItem>,
    /// Class names by index, for labelled folders.
    pub classes: Vec<String>,
}

/// [`Dataset::list_sha256`] made name by name, for samples that come as a stream.
#[derive(Default)]
pub struct ListSha256(sha2::Sha256);

impl ListSha256 {
    /// The next sample's name (its path relative to the folder).
    pub fn add(&mut self, name: &Path) {
        use sha2::Digest;
        self.0.update(name.to_string_lossy().as_bytes());
        self.0.update(b"\n");
    }

    /// The hash, as lowercase hex.
    pub fn finish(self) -> String {
        use sha2::Digest;
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether the file is an `.npz` tensor sample.
pub(crate) fn is_npz(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// The image files a folder's listing takes, by extension (any case): the formats the decoder reads.
pub const IMAGE_EXTENSIONS: [&str; 9] = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "jfif"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Whether the file is a sample: an image or an `.npz` of tensors.
fn is_sample(path: &Path) -> bool {
    is_image(path) || is_npz(path)
}

/// A folder's samples are all images or all `.npz` files: a mixture is refused, naming one of each.
fn check_one_kind(dir: &Path, paths: &[PathBuf]) -> Result<(), DatasetError> {
    let npz = paths.iter().find(|p| is_npz(p));
    let image = paths.iter().find(|p| !is_npz(p));
    if let (Some(npz), Some(image)) = (npz, image) {
        return Err(DatasetError::Mixed { dir: dir.to_path_buf(), image: image.clone(), npz: npz.clone() });
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io { path: dir.to_path_buf(), source };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        entries.push(entry.map_err(io)?.path());
    }
    entries.sort();
    Ok(entries)
}

/// Every file below `dir` (all levels when `recursive`), in sorted path order, as the walk finds them.
/// Symlinked folders are followed; a symlink loop is an error naming it instead of an endless walk.
fn files_below(dir: &Path, recursive: bool) -> impl Iterator<Item = Result<PathBuf, DatasetError>> + '_ {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(move |entry| match entry {
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                Some(Err(match e.into_io_error() {
                    Some(source) => DatasetError::Io { path, source },
                    None => DatasetError::Loop { path },
                }))
            }
            Ok(entry) => entry.file_type().is_file().then(|| Ok(entry.into_path())),
        })
}

/// The files of a listed folder that are not samples: a folder of photos that also holds other kinds of files
/// is calibrated on its samples alone, and the user is told what was left out rather than left to wonder.
#[derive(Debug, Default)]
struct LeftOut {
    count: usize,
    first: Option<PathBuf>,
}

impl LeftOut {
    fn add(&mut self, path: PathBuf) {
        // Hidden files (`.DS_Store`, editors' swap files) are never samples and not worth a word.
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            return;
        }
        self.count += 1;
        self.first.get_or_insert(path);
    }

    /// Warns once per folder and process: one command lists its folder again for several steps (the
    /// calibration, the held-back slice, GPTQ's samples).
    fn warn(&self, dir: &Path) {
        static WARNED: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let Some(first) = &self.first else { return };
        let first_time = WARNED.lock().map(|mut warned| warned.insert(dir.to_path_buf())).unwrap_or(true);
        if first_time {
            tracing::warn!(
                "{}: left out {} file{} that {} neither an image ({}) nor an .npz sample, such as {}",
                dir.display(),
                self.count,
                if self.count == 1 { "" } else { "s" },
                if self.count == 1 { "is" } else { "are" },
                IMAGE_EXTENSIONS.join(", "),
                first.display()
            );
        }
    }
}

/// The error of a folder without samples, naming a file its listing left out (a HEIC photo, say) where it has one.
fn empty(dir: &Path, left_out: &LeftOut) -> DatasetError {
    let found = match &left_out.first {
        Some(first) => format!(", only other files such as {} (convert them to one of these formats)", first.display()),
        None => String::new(),
    };
    DatasetError::Empty { dir: dir.to_path_buf(), found }
}

/// The samples below `dir` (see [`files_below`]), collected into `out`; the other files are counted in `left_out`.
fn images_in(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>, left_out: &mut LeftOut) -> Result<(), DatasetError> {
    for path in files_below(dir, recursive) {
        let path = path?;
        if is_sample(&path) {
            out.push(path);
        } else {
            left_out.add(path);
        }
    }
    Ok(())
}

/// The most classes a labelled folder may have: class ids from folder names must be below it, so that a
/// folder called `99999999999-x` is an error rather than a table of a hundred billion classes.
pub const MAX_CLASSES: usize = 1_000_000;

/// `<label>-<name>` folder names, as in the fixtures (`0-t-shirt`).
fn numbered_label(name: &str) -> Option<(usize, &str)> {
    let (num, rest) = name.split_once('-')?;
    Some((num.parse().ok()?, rest))
}

impl Dataset {
    /// Every image (or every `.npz` sample) under `dir` (recursively), unlabelled, sorted by path; other files are
    /// left out, with one warning that counts them.
    pub fn flat(dir: &Path) -> Result<Dataset, DatasetError> {
        let (mut paths, mut left_out) = (Vec::new(), LeftOut::default());
        images_in(dir, true, &mut paths, &mut left_out)?;
        if paths.is_empty() {
            return Err(empty(dir, &left_out));
        }
        check_one_kind(dir, &paths)?;
        left_out.warn(dir);
        let items = paths.into_iter().map(|path| ImageItem { path, label: None }).collect();
        Ok(Dataset { root: dir.to_path_buf(), items, classes: Vec::new() })
    }

    /// A folder with one sub-folder per class. Labels come from, in order of preference: a class list file
    /// (one folder name per line, line number = label, as for ImageNet's `n01440364` folders); folder names
    /// of the form `<label>-<name>`; otherwise the sorted folder names (torchvision's `ImageFolder` rule).
    pub fn labelled(dir: &Path, class_list: Option<&Path>) -> Result<Dataset, DatasetError> {
        let labels_err = |message: String| DatasetError::Labels { dir: dir.to_path_buf(), message };
        let folders: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
        if folders.is_empty() {
            return Err(labels_err("no class sub-folders; a labelled folder holds one sub-folder per class".into()));
        }
        let folder_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut assigned: Vec<(PathBuf, usize)> = Vec::new();
        let classes: Vec<String>;
        if let Some(list) = class_list {
            let text = safe_io::read_to_string(list, safe_io::limits::TEXT, "a class list")?;
            classes = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            for f in &folders {
                let name = folder_name(f);
                let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
                    labels_err(format!("sub-folder '{name}' is not in the class list {}", list.display()))
                })?;
                assigned.push((f.clone(), label));
            }
        } else if folders.iter().all(|f| numbered_label(&folder_name(f)).is_some()) {
            let max = folders.iter().filter_map(|f| numbered_label(&folder_name(f)).map(|l| l.0)).max().unwrap_or(0);
            if max >= MAX_CLASSES {
                return Err(labels_err(format!(
                    "a class folder carries class id {max}; ids from folder names must be below {MAX_CLASSES} \
                     (rename the folders, or give a class list with --classes)"
                )));
            }
            let mut names = vec![String::new(); max + 1];
            for f in &folders {
                let name = folder_name(f);
                if let Some((label, rest)) = numbered_label(&name) {
                    if !names[label].is_empty() {
                        return Err(labels_err(format!("two sub-folders carry label {label}")));
                    }
                    names[label] = rest.to_string();
                    assigned.push((f.clone(), label));
                }
            }
            classes = names;
        } else {
            classes = folders.iter().map(|f| folder_name(f)).collect();
            assigned = folders.iter().cloned().enumerate().map(|(i, f)| (f, i)).collect();
        }
        let (mut items, mut left_out) = (Vec::new(), LeftOut::default());
        for (folder, label) in assigned {
            let mut paths = Vec::new();
            images_in(&folder, true, &mut paths, &mut left_out)?;
            if paths.is_empty() {
                // An empty class would shift no label but reads as a class with no images, and an output
                // folder left inside --val would shift every label after it.
                let what = if folder.join("int8kit.manifest.json").exists() {
                    "is an int8kit output folder, not a class"
                } else {
                    "holds no images or .npz samples"
                };
                return Err(labels_err(format!(
                    "sub-folder '{}' {what}: every class sub-folder needs samples; move it out of the folder",
                    folder_name(&folder)
                )));
            }
            items.extend(paths.into_iter().map(|path| ImageItem { path, label: Some(label) }));
        }
        if items.is_empty() {
            return Err(empty(dir, &left_out));
        }
        items.sort_by(|a, b| a.path.cmp(&b.path));
        check_one_kind(dir, &items.iter().map(|i| i.path.clone()).collect::<Vec<_>>())?;
        left_out.warn(dir);
        Ok(Dataset { root: dir.to_path_buf(), items, classes })
    }

    /// Whether `dir` looks like a labelled folder: it has sub-folders and no images of its own. A folder with
    /// images at its top level is read as unlabelled, whatever sub-folders it also has.
    pub fn has_class_folders(dir: &Path) -> Result<bool, DatasetError> {
        let entries = sorted_entries(dir)?;
        let images_here = entries.iter().any(|p| p.is_file() && is_sample(p));
        Ok(!images_here && entries.iter().any(|p| p.is_dir()))
    }

    /// An evaluation folder: labelled ([`Dataset::labelled`]) when it has class sub-folders or a class list is
    /// given, else unlabelled ([`Dataset::flat`]).
    pub fn labelled_or_flat(dir: &Path, class_list: Option<&Path>) -> Result<Dataset, DatasetError> {
        if class_list.is_some() || Dataset::has_class_folders(dir)? {
            Dataset::labelled(dir, class_list)
        } else {
            Dataset::flat(dir)
        }
    }

    /// Whether the folder below `dir` (at any depth, labelled or not) holds `.npz` samples rather than images,
    /// from its first sample alone: what a command needs to choose its feed before the full listing (which
    /// refuses a mixture).
    pub fn holds_tensors_below(dir: &Path) -> Result<bool, DatasetError> {
        let mut left_out = LeftOut::default();
        for file in files_below(dir, true) {
            let file = file?;
            if is_sample(&file) {
                return Ok(is_npz(&file));
            }
            left_out.add(file);
        }
        Err(empty(dir, &left_out))
    }

    /// Whether the samples are `.npz` tensor files rather than images (a folder holds one kind only).
    pub fn holds_tensors(&self) -> bool {
        self.items.first().is_some_and(|i| is_npz(&i.path))
    }

    /// Whether the images carry class labels.
    pub fn is_labelled(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(|i| i.label.is_some())
    }

    /// Keeps a seeded, reproducible random subset of `n` images (all of them if `n` is larger), in the
    /// original order.
    pub fn limit(mut self, n: usize, seed: u64) -> Dataset {
        if n >= self.items.len() {
            return self;
        }
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let mut keep = order[..n].to_vec();
        keep.sort_unstable();
        self.items = keep.into_iter().map(|i| self.items[i].clone()).collect();
        self
    }

    /// Splits off a seeded, reproducible slice of `count` samples (none when `count` is 0; all but one at
    /// most, so something is left to calibrate on): returns the rest and the slice, both in the original
    /// order. The slice is chosen from the list alone (never from what the files hold), so it is the same
    /// for every thread count, batch size and shard.
    pub fn hold_out(self, count: usize, seed: u64) -> (Dataset, Dataset) {
        // The `count` samples of lowest priority: a seeded uniform choice that a stream of unknown length makes
        // alike (the Python API keeps the lowest priorities seen so far), so a folder and an iterable of the
        // same samples in the same order hold back the same ones.
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| (hold_out_priority(seed, i as u64), i));
        self.split_off(&order, count)
    }

    /// The slice [`Dataset::hold_out`] chose before `.hist` version 8 (the first `count` of a seeded
    /// shuffle): what `analyze --images` finds again for an older `.hist`.
    pub fn hold_out_before_v8(self, count: usize, seed: u64) -> (Dataset, Dataset) {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ HOLD_OUT_STREAM));
        self.split_off(&order, count)
    }

    /// The rest and the slice of the first `count` samples of `order` (at most all but one), both in list order.
    fn split_off(mut self, order: &[usize], count: usize) -> (Dataset, Dataset) {
        let count = count.min(self.items.len().saturating_sub(1));
        let mut held = vec![false; self.items.len()];
        for &i in &order[..count] {
            held[i] = true;
        }
        let (mut slice, mut rest) = (Vec::with_capacity(count), Vec::with_capacity(self.items.len() - count));
        for (item, h) in std::mem::take(&mut self.items).into_iter().zip(held) {
            if h {
                slice.push(item)
            } else {
                rest.push(item)
            }
        }
        let held_set = Dataset { root: self.root.clone(), items: slice, classes: self.classes.clone() };
        self.items = rest;
        (self, held_set)
    }

    /// Deals the samples over `hands` lists (seeded, from the list alone): a shuffled order, then the first
    /// sample to the first list, the second to the second, and so on; each list keeps the original order.
    pub fn deal(&self, hands: usize, seed: u64) -> Vec<Dataset> {
        let hands = hands.max(1);
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ DEAL_STREAM));
        let mut hand_of = vec![0; self.items.len()];
        for (k, &i) in order.iter().enumerate() {
            hand_of[i] = k % hands;
        }
        (0..hands)
            .map(|h| Dataset {
                root: self.root.clone(),
                items: self.items.iter().zip(&hand_of).filter(|(_, &o)| o == h).map(|(i, _)| i.clone()).collect(),
                classes: self.classes.clone(),
            })
            .collect()
    }

    /// Keeps the `index`-th (1-based) of `count` contiguous parts of the list, in order: what one of `count`
    /// processes takes (`--shard I/N`), so that the parts joined in order are the whole list.
    pub fn shard(mut self, index: usize, count: usize) -> Result<Dataset, DatasetError> {
        let len = self.items.len();
        if index == 0 || index > count || count > len {
            return Err(DatasetError::Shard { root: self.root.clone(), index, count, samples: len });
        }
        self.items = self.items[(index - 1) * len / count..index * len / count].to_vec();
        Ok(self)
    }

    /// SHA-256 over the images' paths relative to the folder, in order: identifies the image set (and, in a
    /// labelled folder, the labels, which come from the paths).
    pub fn list_sha256(&self) -> String {
        let mut h = ListSha256::default();
        for item in &self.items {
            h.add(item.path.strip_prefix(&self.root).unwrap_or(&item.path));
        }
        h.finish()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn npz_samples_are_listed_labelled_or_not_and_never_mixed_with_images() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("0-cat/a.npz"));
        touch(&d.path().join("1-dog/b.NPZ"));
        let ds = Dataset::labelled_or_flat(d.path(), None).unwrap();
        assert!(ds.holds_tensors() && ds.is_labelled());
        assert_eq!(ds.items.iter().map(|i| i.label.unwrap()).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(crate::Feed::for_dataset(&ds, None).unwrap(), crate::Feed::Tensors);
        let with_recipe = crate::Feed::for_dataset(&ds, Some(crate::Recipe::preset(crate::Preset::Imagenet)));
        assert!(with_recipe.unwrap_err().to_string().contains("fed as stored"));

        let flat = tempfile::tempdir().unwrap();
        touch(&flat.path().join("x.npz"));
        touch(&flat.path().join("y.png"));
        let err = Dataset::flat(flat.path()).unwrap_err().to_string();
        assert!(err.contains("holds both images") && err.contains("y.png") && err.contains("x.npz"), "{err}");
        let only_images = tempfile::tempdir().unwrap();
        touch(&only_images.path().join("y.png"));
        let ds = Dataset::flat(only_images.path()).unwrap();
        assert!(!ds.holds_tensors());
        assert!(crate::Feed::for_dataset(&ds, None).unwrap_err().to_string().contains("need a preprocessing recipe"));
    }

    #[test]
    fn numbered_and_class_list_labels() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("1-trouser/b.png"));
        touch(&d.path().join("0-t-shirt/a.PNG"));
        touch(&d.path().join("0-t-shirt/notes.txt"));
        let ds = Dataset::labelled(d.path(), None).unwrap();
        assert_eq!(ds.classes, vec!["t-shirt", "trouser"]);
        assert_eq!(ds.items.iter().map(|i| i.label.unwrap()).collect::<Vec<_>>(), vec![0, 1]);

        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("n02/x.jpg"));
        touch(&d.path().join("n01/y.jpeg"));
        let list = d.path().join("classes.txt");
        std::fs::write(&list, "n02\nn01\n").unwrap();
        let ds = Dataset::labelled(d.path(), Some(&list)).unwrap();
        let labels: Vec<_> =
            ds.items.iter().map(|i| (i.path.file_name().unwrap().to_owned(), i.label.unwrap())).collect();
        assert_eq!(labels, vec![("y.jpeg".into(), 1), ("x.jpg".into(), 0)]);
        // Without the list: sorted folder names.
        let ds = Dataset::labelled(d.path(), None).unwrap();
        assert_eq!(ds.classes, vec!["n01", "n02"]);
    }

    #[test]
    fn every_decoded_format_is_listed_and_other_files_are_counted_as_left_out() {
        let d = tempfile::tempdir().unwrap();
        for ext in IMAGE_EXTENSIONS {
            touch(&d.path().join(format!("a.{}", ext.to_ascii_uppercase())));
            touch(&d.path().join(format!("sub/b.{ext}")));
        }
        for other in ["labels.csv", "sub/notes.txt", "x.avif", ".DS_Store", "sub/.swp"] {
            touch(&d.path().join(other));
        }
        assert_eq!(Dataset::flat(d.path()).unwrap().len(), 2 * IMAGE_EXTENSIONS.len());
        let (mut paths, mut left_out) = (Vec::new(), LeftOut::default());
        images_in(d.path(), true, &mut paths, &mut left_out).unwrap();
        assert_eq!(paths.len(), 2 * IMAGE_EXTENSIONS.len());
        assert_eq!(left_out.count, 3, "hidden files are not counted");
        assert_eq!(left_out.first.as_deref(), Some(d.path().join("labels.csv").as_path()), "the first by path");
        let only_other = tempfile::tempdir().unwrap();
        touch(&only_other.path().join("photo.heic"));
        let err = Dataset::flat(only_other.path()).unwrap_err().to_string();
        assert!(
            err.contains("no images (PNG, JPEG, WebP") && err.contains("such as") && err.contains("photo.heic"),
            "{err}"
        );
        let err = Dataset::holds_tensors_below(only_other.path()).unwrap_err().to_string();
        assert!(err.contains("photo.heic"), "{err}");
    }

    #[test]
    fn absurd_class_ids_are_refused_not_allocated() {
        for id in ["99999999999", "18446744073709551615", "1000000"] {
            let d = tempfile::tempdir().unwrap();
            touch(&d.path().join("0-a/a.png"));
            touch(&d.path().join(format!("{id}-x/b.png")));
            let err = Dataset::labelled(d.path(), None).unwrap_err().to_string();
            assert!(err.contains(&format!("class id {id}")) && err.contains("below 1000000"), "{err}");
        }
    }

    #[test]
    fn only_regular_files_are_listed_and_symlink_loops_are_refused() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("a.png"));
        touch(&d.path().join("sub/b.png"));
        assert!(std::process::Command::new("mkfifo").arg(d.path().join("c.png")).status().unwrap().success());
        assert_eq!(Dataset::flat(d.path()).unwrap().len(), 2, "a FIFO is not an image");
        std::os::unix::fs::symlink(d.path(), d.path().join("sub/loop")).unwrap();
        let err = Dataset::flat(d.path()).unwrap_err().to_string();
        assert!(err.contains("loop"), "{err}");
    }

    #[test]
    fn hold_out_is_seeded_disjoint_ordered_and_leaves_one() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..30 {
            touch(&d.path().join(format!("{i:02}.png")));
        }
        let all = Dataset::flat(d.path()).unwrap();
        let (rest, held) = all.clone().hold_out(5, 3);
        assert_eq!((rest.len(), held.len()), (25, 5));
        assert!(held.items.iter().all(|i| !rest.items.contains(i)));
        assert!(
            held.items.windows(2).all(|w| w[0].path < w[1].path)
                && rest.items.windows(2).all(|w| w[0].path < w[1].path)
        );
        assert_eq!(all.clone().hold_out(5, 3).1.items, held.items);
        assert_ne!(all.clone().hold_out(5, 4).1.items, held.items);
        // Not the images a limit with the same seed keeps first.
        assert_eq!(all.clone().hold_out(0, 3).0.len(), 30);
        assert_eq!(all.hold_out(99, 3).0.len(), 1);
    }

    /// What a stream of unknown length can do (keep the lowest priorities seen, at most `count`) holds back
    /// the list's slice, and the slice spreads over the whole list.
    #[test]
    fn a_stream_keeping_the_lowest_priorities_holds_back_the_lists_slice() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..1000 {
            touch(&d.path().join(format!("{i:04}.png")));
        }
        let all = Dataset::flat(d.path()).unwrap();
        for seed in [0, 7] {
            let held = all.clone().hold_out(64, seed).1;
            let mut kept: Vec<(u64, usize)> = Vec::new();
            for i in 0..all.len() {
                kept.push((hold_out_priority(seed, i as u64), i));
                kept.sort_unstable();
                kept.truncate(64);
            }
            let mut streamed: Vec<usize> = kept.into_iter().map(|(_, i)| i).collect();
            streamed.sort_unstable();
            let from_list: Vec<usize> =
                held.items.iter().map(|h| all.items.iter().position(|i| i == h).unwrap()).collect();
            assert_eq!(streamed, from_list, "seed {seed}");
            let first_half = from_list.iter().filter(|&&i| i < 500).count();
            assert!((16..=48).contains(&first_half), "{first_half} of 64 in the first half");
        }
    }

    #[test]
    fn deal_splits_every_sample_into_exactly_one_ordered_hand() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..31 {
            touch(&d.path().join(format!("{i:02}.png")));
        }
        let all = Dataset::flat(d.path()).unwrap();
        let hands = all.deal(3, 5);
        assert_eq!(hands.iter().map(Dataset::len).collect::<Vec<_>>(), vec![11, 10, 10]);
        let mut joined: Vec<_> = hands.iter().flat_map(|h| h.items.clone()).collect();
        joined.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(joined, all.items);
        assert!(hands.iter().all(|h| h.items.windows(2).all(|w| w[0].path < w[1].path)));
        assert_eq!(all.deal(3, 5)[1].items, hands[1].items);
        assert_ne!(all.deal(3, 6)[1].items, hands[1].items);
        // Not the first slice the hold-out takes with the same seed.
        assert_ne!(all.clone().hold_out(11, 5).1.items, hands[0].items);
    }

    #[test]
    fn limit_is_seeded_and_keeps_order() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..50 {
            touch(&d.path().join(format!("{i:03}.png")));
        }
        let a = Dataset::flat(d.path()).unwrap().limit(10, 7);
        let b = Dataset::flat(d.path()).unwrap().limit(10, 7);
        let c = Dataset::flat(d.path()).unwrap().limit(10, 8);
        assert_eq!(a.items, b.items);
        assert_ne!(a.items, c.items);
        assert!(a.items.windows(2).all(|w| w[0].path < w[1].path));
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn evaluation_folders_are_labelled_only_with_class_folders() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("0-a/x.png"));
        touch(&d.path().join("1-b/y.png"));
        let ds = Dataset::labelled_or_flat(d.path(), None).unwrap();
        assert!(ds.is_labelled() && ds.classes == ["a", "b"]);
        // Images at the top level: unlabelled, sub-folders included.
        touch(&d.path().join("z.png"));
        let ds = Dataset::labelled_or_flat(d.path(), None).unwrap();
        assert!(!ds.is_labelled() && ds.len() == 3 && ds.classes.is_empty());
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("only.png"));
        assert!(!Dataset::has_class_folders(d.path()).unwrap());
        assert!(!Dataset::labelled_or_flat(d.path(), None).unwrap().is_labelled());
    }

    #[test]
    fn empty_folder_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let err = Dataset::flat(d.path()).unwrap_err().to_string();
        assert!(err.contains(&d.path().display().to_string()), "{err}");
    }
}
