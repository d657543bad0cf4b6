//! Batches decoded in parallel ahead of the consumer, in a fixed order.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::preprocess::preprocess_file;
use crate::{Dataset, DatasetError, Feed, ImageItem};

/// What to do with an unreadable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadImage {
    /// Stop with an error naming the file.
    Fail,
    /// Leave the file out and count it.
    Skip,
}

/// How batches are made.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Images per batch.
    pub batch_size: usize,
    /// Batches decoded ahead of the consumer; bounds memory.
    pub lookahead: usize,
    /// What to do with unreadable images.
    pub on_bad_image: OnBadImage,
    /// Pool that decodes; `None` uses rayon's global pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Whether the model takes exactly `batch_size` images per batch: then a recipe's larger sizes do not
    /// take fewer ([`crate::Recipe::batch_at`]).
    pub fixed_batch: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { batch_size: 32, lookahead: 2, on_bad_image: OnBadImage::Fail, pool: None, fixed_batch: false }
    }
}

/// Samples ready to feed: preprocessed images (`data` has `shape` = the recipe's batch shape for
/// `items.len()`), or, from a folder of `.npz` samples, one stacked array per model input (`tensors`; `data` is
/// then empty and `shape` is `[N, 0, 0, 0]`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Preprocessed values, in the recipe's layout.
    pub data: Vec<f32>,
    /// Batch shape: [N, C, H, W] or [N, H, W, C].
    pub shape: [usize; 4],
    /// The samples, in batch order.
    pub items: Vec<ImageItem>,
    /// Tensor samples: one array per model input, stacked along the batch axis; empty for images.
    pub tensors: Vec<crate::NamedArray>,
}

impl Batch {
    /// The batch as a run's inputs: the images as `image_input` (the model input the recipe feeds), or the
    /// stacked arrays under their own names.
    pub fn inputs<'a>(&'a self, image_input: &'a str) -> Vec<feeds::Input<'a>> {
        if self.tensors.is_empty() {
            vec![feeds::Input { name: image_input, shape: &self.shape, values: feeds::Values::Pixels(&self.data) }]
        } else {
            self.tensors.iter().map(|a| a.input()).collect()
        }
    }

    /// The shape of one sample past the batch axis: the image's, or each array's in input order. Batches of a
    /// recipe's several sizes, or of `.npz` samples of several shapes, differ in it.
    pub fn sample_shape(&self) -> Vec<Vec<usize>> {
        if self.tensors.is_empty() {
            vec![self.shape[1..].to_vec()]
        } else {
            self.tensors.iter().map(|a| a.shape.get(1..).unwrap_or_default().to_vec()).collect()
        }
    }

    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no sample.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// What batches must share to be one: each array's name and sample shape (sorted by name), or the image's
    /// sample shape.
    pub fn shape_key(&self) -> ShapeKey {
        if self.tensors.is_empty() {
            return vec![(String::new(), self.shape[1..].to_vec())];
        }
        let mut key: Vec<_> =
            self.tensors.iter().map(|a| (a.name.clone(), a.shape.get(1..).unwrap_or_default().to_vec())).collect();
        key.sort();
        key
    }

    /// Appends `other`'s samples, of the same [`Batch::shape_key`]; `Err` naming the input whose element type
    /// differs (nothing appended then).
    fn append(&mut self, mut other: Batch) -> Result<(), String> {
        for a in &self.tensors {
            let b = other.tensors.iter().find(|b| b.name == a.name).ok_or_else(|| a.name.clone())?;
            if a.data.dtype() != b.data.dtype() {
                return Err(format!("'{}' is {} here and {} before", a.name, b.data.dtype(), a.data.dtype()));
            }
        }
        for a in &mut self.tensors {
            let at = other.tensors.iter().position(|b| b.name == a.name).expect("checked above");
            let b = other.tensors.swap_remove(at);
            a.data.extend(&b.data);
            a.shape[0] += b.shape[0];
        }
        self.data.extend_from_slice(&other.data);
        self.shape[0] += other.shape[0];
        self.items.append(&mut other.items);
        Ok(())
    }

    /// Splits off the samples from `at` on into a batch of their own.
    pub fn split_off(&mut self, at: usize) -> Batch {
        let n = self.len().max(1);
        let per = self.data.len() / n;
        let mut shape = self.shape;
        shape[0] = shape[0].saturating_sub(at);
        self.shape[0] = self.shape[0].min(at);
        let tensors = self
            .tensors
            .iter_mut()
            .map(|a| {
                let per = a.data.len() / a.shape.first().copied().unwrap_or(1).max(1);
                let mut rest = a.shape.clone();
                rest[0] = rest[0].saturating_sub(at);
                a.shape[0] = a.shape[0].min(at);
                crate::NamedArray { name: a.name.clone(), shape: rest, data: a.data.split_off(at * per) }
            })
            .collect();
        Batch { data: self.data.split_off(at * per), shape, items: self.items.split_off(at), tensors }
    }
}

/// What samples must share to be batched together ([`Batch::shape_key`]).
pub type ShapeKey = Vec<(String, Vec<usize>)>;

/// A caller's batches regrouped into batches of `size` samples of one [`Batch::shape_key`] each, every
/// shape's samples in the order they came: the batches a folder of those samples in that order makes
/// ([`BatchStream`] with that batch size, shape by shape), so that models fed either compute the same
/// outputs whatever sizes the caller's batches had. A shape's batch goes out as it fills; the rest, shape by
/// shape in the order first seen, when the stream ends. Memory: fewer than `size` samples per shape wait.
pub struct Rebatched<'a> {
    inner: &'a mut dyn BatchSource,
    size: usize,
    /// Per shape, in the order first seen: the samples waiting for a full batch.
    waiting: Vec<(ShapeKey, Option<Batch>)>,
    ready: std::collections::VecDeque<Batch>,
    ended: bool,
}

impl<'a> Rebatched<'a> {
    /// Batches of `size` (at least 1) samples from `inner`.
    pub fn new(inner: &'a mut dyn BatchSource, size: usize) -> Rebatched<'a> {
        Rebatched { inner, size: size.max(1), waiting: Vec::new(), ready: Default::default(), ended: false }
    }

    fn add(&mut self, batch: Batch) -> Result<(), DatasetError> {
        let key = batch.shape_key();
        let slot = match self.waiting.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.waiting.push((key, None));
                self.waiting.len() - 1
            }
        };
        let waiting = &mut self.waiting[slot].1;
        match waiting {
            None => *waiting = Some(batch),
            Some(w) => {
                let first = batch.items.first().map(|i| i.path.clone()).unwrap_or_default();
                w.append(batch).map_err(|message| DatasetError::Tensors { path: first, message })?;
            }
        }
        while let Some(w) = waiting.as_mut().filter(|w| w.len() >= self.size) {
            let rest = w.split_off(self.size);
            self.ready.push_back(std::mem::replace(w, rest));
        }
        if waiting.as_ref().is_some_and(Batch::is_empty) {
            *waiting = None;
        }
        Ok(())
    }
}

impl Iterator for Rebatched<'_> {
    type Item = Result<Batch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Some(Ok(b));
            }
            if self.ended {
                return None;
            }
            match self.inner.next() {
                Some(Ok(batch)) if batch.is_empty() => {}
                Some(Ok(batch)) => {
                    if let Err(e) = self.add(batch) {
                        return Some(Err(e));
                    }
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.ended = true;
                    self.ready.extend(self.waiting.drain(..).filter_map(|(_, w)| w));
                }
            }
        }
    }
}

impl BatchSource for Rebatched<'_> {
    fn skipped(&self) -> Vec<(PathBuf, String)> {
        self.inner.skipped()
    }
}

/// A decoded sample: an image's preprocessed values, or an `.npz` sample's arrays.
enum Sample {
    Image(Vec<f32>),
    Tensors(Vec<crate::NamedArray>),
}

/// An iterator over batches, decoded on a background thread at most `lookahead` batches ahead.
pub struct BatchStream {
    rx: Receiver<Result<Batch, DatasetError>>,
    worker: Option<JoinHandle<()>>,
    skipped: Arc<Mutex<Vec<(PathBuf, String)>>>,
}

impl BatchStream {
    /// Decodes the dataset's samples in batches, ahead of the consumer, in parallel: images through the feed's
    /// recipe, `.npz` samples as stored (a sample of the other kind is an error naming it).
    pub fn new(dataset: &Dataset, feed: &Feed, options: StreamOptions) -> BatchStream {
        let (tx, rx) = sync_channel(options.lookahead.max(1));
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let items = dataset.items.clone();
        let feed = feed.clone();
        let skipped_w = Arc::clone(&skipped);
        let worker = std::thread::spawn(move || {
            let batch_size = options.batch_size.max(1);
            // A recipe of several sizes: every sample at each size in turn, batches of one size each, of no
            // more pixels than a batch of the smallest size.
            let feeds: Vec<(Feed, usize)> = match &feed {
                Feed::Images(recipe) => recipe
                    .each_size_batched(batch_size)
                    .into_iter()
                    .map(|(one, batch)| (Feed::Images(one), if options.fixed_batch { batch_size } else { batch }))
                    .collect(),
                Feed::Tensors => vec![(Feed::Tensors, batch_size)],
            };
            for (feed, batch_size) in &feeds {
                if !stream_one_size(&items, feed, *batch_size, &options, &tx, &skipped_w) {
                    return;
                }
            }
        });
        BatchStream { rx, worker: Some(worker), skipped }
    }

    /// Files left out so far under `OnBadImage::Skip`, with the reason. A file skipped at several sizes is listed once (with its first reason).
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        let mut all = self.skipped.lock().map(|s| s.clone()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        all.retain(|(path, _)| seen.insert(path.clone()));
        all
    }
}

/// Streams `items` through one one-size `feed` into `tx`; false when the stream has to end (an error sent,
/// a stop, or the consumer gone).
fn stream_one_size(
    items: &[ImageItem],
    feed: &Feed,
    batch_size: usize,
    options: &StreamOptions,
    tx: &SyncSender<Result<Batch, DatasetError>>,
    skipped: &Mutex<Vec<(PathBuf, String)>>,
) -> bool {
    let per_image = feed.recipe().map_or(0, |r| r.image_len());
    let decode = |chunk: &[ImageItem]| -> Vec<Result<Sample, DatasetError>> {
        chunk
            .par_iter()
            .map(|item| {
                let wrong =
                    |message: &str| DatasetError::Tensors { path: item.path.clone(), message: message.to_string() };
                match (feed, crate::folder::is_npz(&item.path)) {
                    (Feed::Tensors, true) => crate::tensors::read_npz(&item.path).map(Sample::Tensors),
                    (Feed::Images(recipe), false) => {
                        let mut buf = vec![0f32; per_image];
                        preprocess_file(&item.path, recipe, &mut buf).map(|_| Sample::Image(buf))
                    }
                    (Feed::Images(_), true) => Err(wrong(
                        "an .npz tensor sample where images are fed through a recipe; give a folder of images",
                    )),
                    (Feed::Tensors, false) => Err(wrong(
                        "an image where .npz tensor samples are fed; give a folder of .npz files, or a \
                         recipe for images",
                    )),
                }
            })
            .collect()
    };
    for chunk in items.chunks(batch_size) {
        if let Err(stop) = safe_io::interrupt::check() {
            let _ = tx.send(Err(stop.into()));
            return false;
        }
        let decoded = match &options.pool {
            Some(pool) => pool.install(|| decode(chunk)),
            None => decode(chunk),
        };
        let mut data = Vec::with_capacity(chunk.len() * per_image);
        let mut samples = Vec::new();
        let mut kept = Vec::with_capacity(chunk.len());
        for (item, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(sample) => {
                    match sample {
                        Sample::Image(buf) => data.extend_from_slice(&buf),
                        Sample::Tensors(arrays) => samples.push((item.path.clone(), arrays)),
                    }
                    kept.push(item.clone());
                }
                Err(e) if options.on_bad_image == OnBadImage::Skip => {
                    tracing::warn!("skipping {}: {e}", item.path.display());
                    if let Ok(mut s) = skipped.lock() {
                        s.push((item.path.clone(), e.to_string()));
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return false;
                }
            }
        }
        if kept.is_empty() {
            continue;
        }
        let batches = if let Feed::Images(recipe) = feed {
            vec![Ok(Batch { shape: recipe.batch_shape(kept.len()), data, items: kept, tensors: Vec::new() })]
        } else {
            // Samples of different shapes (sequence lengths, resolutions) go in batches of one shape each.
            match crate::tensors::shape_runs(&samples) {
                Ok(runs) => runs
                    .into_iter()
                    .map(|run| {
                        let items = kept[run.clone()].to_vec();
                        crate::tensors::stack(&samples[run]).map(|tensors| Batch {
                            shape: [items.len(), 0, 0, 0],
                            data: Vec::new(),
                            items,
                            tensors,
                        })
                    })
                    .collect(),
                Err(e) => vec![Err(e)],
            }
        };
        for batch in batches {
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return false; // the consumer stopped early, or the error is sent
            }
        }
    }
    true
}

/// Where a pass gets its batches: a folder's [`BatchStream`], or batches a caller makes (the Python API's
/// iterables), in their order.
pub trait BatchSource: Iterator<Item = Result<Batch, DatasetError>> {
    /// Samples left out as unreadable so far, with the reason.
    fn skipped(&self) -> Vec<(PathBuf, String)> {
        Vec::new()
    }
}

impl BatchSource for BatchStream {
    fn skipped(&self) -> Vec<(PathBuf, String)> {
        BatchStream::skipped(self)
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                if let Some(w) = self.worker.take() {
                    let _ = w.join();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageItem, NamedArray};
    use feeds::ArrayData;

    /// A batch of `n` samples of `len` int64 values each, counting up from `first` (sample k holds k's value).
    fn tokens(first: usize, n: usize, len: usize) -> Batch {
        let items = (first..first + n).map(|i| ImageItem { path: format!("sample {i}").into(), label: Some(i % 3) });
        let values = (first..first + n).flat_map(|i| std::iter::repeat_n(i as i64, len)).collect();
        Batch {
            data: Vec::new(),
            shape: [n, 0, 0, 0],
            items: items.collect(),
            tensors: vec![NamedArray { name: "ids".into(), shape: vec![n, len], data: ArrayData::I64(values) }],
        }
    }

    struct Given(std::vec::IntoIter<Batch>);
    impl Iterator for Given {
        type Item = Result<Batch, DatasetError>;
        fn next(&mut self) -> Option<Self::Item> {
            self.0.next().map(Ok)
        }
    }
    impl BatchSource for Given {}

    #[test]
    fn a_streams_batches_are_regrouped_by_shape_into_full_batches_in_order() {
        // Samples 0..12: lengths 4 and 7 interleaved, in batches of 3, 5, 1, 2 and 1 samples.
        let given = vec![tokens(0, 3, 4), tokens(3, 5, 7), tokens(8, 1, 4), tokens(9, 2, 4), tokens(11, 1, 7)];
        let mut source = Given(given.into_iter());
        let out: Vec<Batch> = Rebatched::new(&mut source, 4).collect::<Result<_, _>>().unwrap();
        let summary: Vec<(usize, Vec<i64>)> = out
            .iter()
            .map(|b| {
                let ArrayData::I64(v) = &b.tensors[0].data else { panic!("int64") };
                let len = b.tensors[0].shape[1];
                assert_eq!(b.tensors[0].shape[0], b.len());
                assert!(v.len() == b.len() * len && b.shape[0] == b.len());
                (len, v.iter().step_by(len).copied().collect())
            })
            .collect();
        // Full batches as they fill, then each shape's rest in the order the shapes were first seen.
        assert_eq!(summary, vec![(7, vec![3, 4, 5, 6]), (4, vec![0, 1, 2, 8]), (4, vec![9, 10]), (7, vec![7, 11])]);
        let items: Vec<String> = out[1].items.iter().map(|i| i.path.display().to_string()).collect();
        assert_eq!(items, ["sample 0", "sample 1", "sample 2", "sample 8"]);
    }

    #[test]
    fn a_batch_of_another_element_type_is_refused_with_the_input_named() {
        let mut other = tokens(3, 2, 4);
        other.tensors[0].data = ArrayData::I32(vec![0; 8]);
        let mut source = Given(vec![tokens(0, 3, 4), other].into_iter());
        let err = Rebatched::new(&mut source, 8).find_map(Result::err).expect("an error");
        assert!(err.to_string().contains("'ids' is int32 here and int64 before"), "{err}");
    }
}
