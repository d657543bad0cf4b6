//! `int8kit._native`: what the Python package `int8kit` (python/int8kit) calls. The package's functions
//! mirror the commands; those fed by folders run the very command line in-process (`run_cli`), those fed
//! by Python iterables stream the batches into `calibrate::calibrate_batches` (`calibrate_iter`).
//!
//! Threads: the interpreter's thread pulls batches from the user's iterable (it needs the interpreter) and
//! hands them over a bounded queue to a worker thread that runs ONNX Runtime and the statistics without the
//! interpreter, so the next batch is made while the previous one runs and memory stays bounded. Ctrl-C:
//! Python's handler only sets a flag, so the waiting loops check for signals every 100 ms and, on one,
//! ask the run to stop (`safe_io::interrupt`: it ends at its next batch and commits nothing) and re-raise.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use clap::Parser;
use datasets::{Batch, BatchSource, DatasetError, Feed, ImageItem, Recipe};
use feeds::{ArrayData, NamedArray};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

pyo3::create_exception!(_native, Int8kitError, PyException, "Base class of int8kit's errors.");
pyo3::create_exception!(
    _native,
    InputError,
    Int8kitError,
    "Bad input or a run error: what the command line exits 2 on, with its message."
);

/// How often a waiting loop looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The error chain on one line, as the command line prints it.
fn input_error(e: anyhow::Error) -> PyErr {
    InputError::new_err(int8kit::exit::error_text(&e))
}

/// Waits for `done` without the interpreter, looking for Ctrl-C every [`SIGNAL_POLL`]: on one, asks the run
/// to stop, waits for it to end, and returns the interrupt.
fn wait<T: Send>(py: Python<'_>, mut done: Receiver<T>) -> PyResult<T> {
    let mut interrupted: Option<PyErr> = None;
    loop {
        let (back, received) = py.detach(move || {
            let r = done.recv_timeout(SIGNAL_POLL);
            (done, r)
        });
        done = back;
        match received {
            Ok(value) => {
                safe_io::interrupt::clear();
                return match interrupted {
                    Some(e) => Err(e),
                    None => Ok(value),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        safe_io::interrupt::request();
                        interrupted = Some(e);
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                safe_io::interrupt::clear();
                return Err(interrupted.unwrap_or_else(|| Int8kitError::new_err("the worker thread died")));
            }
        }
    }
}

/// Runs `int8kit ARGS...` in this process (`argv[0]` is the program name) and returns its exit status and,
/// for status 2, the error the command line prints. `--help` and `--version` print and return 0.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> PyResult<(u8, Option<String>)> {
    let cli = match parse_cli(&argv) {
        Ok(cli) => cli,
        Err(status) => return Ok(status),
    };
    let (tx, rx) = sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(exit_status(int8kit::run(cli)));
    });
    wait(py, rx)
}

/// The parsed command line, or the status the binary would exit with: `--help` and `--version` print and
/// give 0, a bad line gives 2 with clap's message.
fn parse_cli(argv: &[String]) -> Result<int8kit::Cli, (u8, Option<String>)> {
    int8kit::Cli::try_parse_from(argv).map_err(|e| {
        if e.use_stderr() {
            (int8kit::exit::ERROR_STATUS, Some(e.render().to_string().trim_end().to_string()))
        } else {
            let _ = e.print();
            (0, None)
        }
    })
}

/// A run's exit status and, for status 2, the error the command line prints.
fn exit_status(result: anyhow::Result<int8kit::Outcome>) -> (u8, Option<String>) {
    match result {
        Ok(outcome) => (outcome.code(), None),
        Err(e) => (int8kit::exit::ERROR_STATUS, Some(int8kit::exit::error_text(&e))),
    }
}

/// One array of a batch as the package hands it over: `(name, dtype, shape, address, nbytes, array)`, the
/// array a C-contiguous, native-endian numpy array kept alive by the tuple while it is copied.
fn array_from(item: &Bound<'_, PyAny>, origin: &str) -> PyResult<NamedArray> {
    let t = item.cast::<PyTuple>().map_err(|_| Int8kitError::new_err("internal: a batch array is not a tuple"))?;
    let name: String = t.get_item(0)?.extract()?;
    let dtype: String = t.get_item(1)?.extract()?;
    let shape: Vec<usize> = t.get_item(2)?.extract()?;
    let address: usize = t.get_item(3)?.extract()?;
    let nbytes: usize = t.get_item(4)?.extract()?;
    let count: usize = shape.iter().product();
    let refuse = |message: String| InputError::new_err(format!("{origin}: array '{name}': {message}"));
    fn copy<T: Copy + Default>(address: usize, count: usize, nbytes: usize) -> Option<Vec<T>> {
        if count.checked_mul(std::mem::size_of::<T>()) != Some(nbytes) || (count > 0 && address == 0) {
            return None;
        }
        if count == 0 {
            return Some(Vec::new());
        }
        // SAFETY: the package passes the address and byte size of a C-contiguous, native-endian numpy array of
        // this element type that the tuple keeps alive; the size was checked against the element count above,
        // and the interpreter (held here) lets no other Python code change the array during the copy.
        // `read_unaligned` per element copes with any alignment numpy gives.
        let mut out = Vec::with_capacity(count);
        let base = address as *const T;
        for i in 0..count {
            // SAFETY: i < count and count * size_of::<T>() == nbytes, so the read stays inside the array.
            out.push(unsafe { base.add(i).read_unaligned() });
        }
        Some(out)
    }
    let data = match dtype.as_str() {
        "float32" => copy::<f32>(address, count, nbytes).map(ArrayData::F32),
        // For a model with an FP16 input: held as float32 (exactly) and narrowed again at the model's edge.
        "float16" => copy::<u16>(address, count, nbytes)
            .map(|bits| ArrayData::F32(bits.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect())),
        "float64" => copy::<f64>(address, count, nbytes).map(ArrayData::F64),
        "int64" => copy::<i64>(address, count, nbytes).map(ArrayData::I64),
        "int32" => copy::<i32>(address, count, nbytes).map(ArrayData::I32),
        "int16" => copy::<i16>(address, count, nbytes).map(ArrayData::I16),
        "int8" => copy::<i8>(address, count, nbytes).map(ArrayData::I8),
        "uint8" => copy::<u8>(address, count, nbytes).map(ArrayData::U8),
        "uint16" => copy::<u16>(address, count, nbytes).map(ArrayData::U16),
        "bool" => copy::<u8>(address, count, nbytes).map(|v| ArrayData::Bool(v.into_iter().map(|b| b != 0).collect())),
        other => {
            return Err(refuse(format!(
                "element type {other} is not fed by int8kit (float32, float16, float64, int64, int32, int16, int8, \
                 uint8, uint16, bool); convert it with .astype(...)"
            )))
        }
    };
    let data = data.ok_or_else(|| refuse(format!("{nbytes} bytes do not hold {count} {dtype} values")))?;
    Ok(NamedArray { name, shape, data })
}

/// A batch from the package's normalized form: `(arrays, labels)`, labels `None` or one per sample.
fn batch_from(item: &Bound<'_, PyAny>, feed: &Feed, index: usize, first_sample: usize) -> PyResult<Batch> {
    let origin = format!("batch {index}");
    let t = item.cast::<PyTuple>().map_err(|_| Int8kitError::new_err("internal: a batch is not a tuple"))?;
    let arrays: Vec<NamedArray> =
        t.get_item(0)?.try_iter()?.map(|a| array_from(&a?, &origin)).collect::<PyResult<_>>()?;
    let n = arrays.first().and_then(|a| a.shape.first().copied()).unwrap_or(0);
    let labels: Option<Vec<i64>> = t.get_item(1)?.extract()?;
    if let Some(labels) = &labels {
        if labels.len() != n {
            return Err(InputError::new_err(format!("{origin}: {} labels for {n} samples", labels.len())));
        }
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= datasets::MAX_CLASSES as i64) {
            return Err(InputError::new_err(format!(
                "{origin}: label {bad}; labels are class indexes from 0 to {}",
                datasets::MAX_CLASSES - 1
            )));
        }
    }
    let items = (0..n)
        .map(|i| ImageItem {
            path: PathBuf::from(format!("sample {}", first_sample + i)),
            label: labels.as_ref().map(|l| l[i] as usize),
        })
        .collect();
    match feed {
        Feed::Images(recipe) => {
            let [a] = <[NamedArray; 1]>::try_from(arrays).map_err(|a| {
                InputError::new_err(format!(
                    "{origin}: {} arrays; with a recipe each batch is one float32 array of preprocessed images",
                    a.len()
                ))
            })?;
            let ArrayData::F32(data) = a.data else {
                return Err(InputError::new_err(format!(
                    "{origin}: {} values; with a recipe each batch holds the float32 values the recipe makes",
                    a.data.dtype()
                )));
            };
            let shape = match <[usize; 4]>::try_from(a.shape.as_slice()) {
                Ok(s) => s,
                Err(_) => {
                    return Err(InputError::new_err(format!(
                        "{origin}: shape {:?}, but the recipe makes {:?} ({:?} layout)",
                        a.shape,
                        recipe.batch_shape(n),
                        recipe.layout
                    )))
                }
            };
            Ok(Batch { data, shape, items, tensors: Vec::new() })
        }
        Feed::Tensors => Ok(Batch { data: Vec::new(), shape: [n, 0, 0, 0], items, tensors: arrays }),
    }
}

/// Batches that arrive over the queue from the interpreter's thread; an unnamed array (a bare array given
/// for a model with one input) gets that input's name.
struct Queued {
    rx: Receiver<Result<Batch, DatasetError>>,
    inputs: Vec<String>,
}

impl Iterator for Queued {
    type Item = Result<Batch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let mut batch = match self.rx.recv().ok()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        for a in batch.tensors.iter_mut().filter(|a| a.name.is_empty()) {
            match self.inputs.as_slice() {
                [only] => a.name = only.clone(),
                several => {
                    return Some(Err(DatasetError::Tensors {
                        path: PathBuf::from("a batch"),
                        message: format!(
                            "a bare array, but the model has {} inputs ({}): give a dict {{input_name: array}}",
                            several.len(),
                            several.join(", ")
                        ),
                    }))
                }
            }
        }
        Some(Ok(batch))
    }
}

impl BatchSource for Queued {}

/// The feed of given batches: the recipe's images (TOML text), or arrays by input name.
fn feed_of(recipe: Option<&str>) -> PyResult<Feed> {
    match recipe {
        None => Ok(Feed::Tensors),
        Some(text) => Recipe::from_toml(text, "recipe").map(Feed::Images).map_err(|e| input_error(e.into())),
    }
}

/// Sends `batch` to the worker without the interpreter, looking for Ctrl-C while the queue is full. `Ok(false)`
/// when the worker has stopped (its result says why).
fn send(py: Python<'_>, tx: &SyncSender<Result<Batch, DatasetError>>, batch: Batch) -> PyResult<bool> {
    let mut pending = Some(Ok(batch));
    loop {
        let item = pending.take().expect("a batch to send");
        let outcome = py.detach(|| match tx.try_send(item) {
            Err(TrySendError::Full(back)) => {
                std::thread::sleep(Duration::from_millis(2));
                Err(Some(back))
            }
            Err(TrySendError::Disconnected(_)) => Err(None),
            Ok(()) => Ok(()),
        });
        match outcome {
            Ok(()) => return Ok(true),
            Err(None) => return Ok(false),
            Err(Some(back)) => {
                py.check_signals()?;
                pending = Some(back);
            }
        }
    }
}

/// Pulls the interpreter's batches into the worker's queue `tx`, then waits for the worker's result on
/// `done`. A failing iterable (or Ctrl-C) stops the run, which must not finish on part of the samples.
fn feed_worker<T: Send>(
    py: Python<'_>,
    batches: &Bound<'_, PyAny>,
    feed: &Feed,
    tx: SyncSender<Result<Batch, DatasetError>>,
    done: Receiver<T>,
) -> PyResult<T> {
    let mut sent = 0usize;
    let pulled = (|| -> PyResult<()> {
        for (index, item) in batches.try_iter()?.enumerate() {
            py.check_signals()?;
            let batch = batch_from(&item?, feed, index, sent)?;
            sent += batch.len();
            if !send(py, &tx, batch)? {
                break; // the worker stopped; its result says why
            }
        }
        Ok(())
    })();
    if let Err(e) = pulled {
        safe_io::interrupt::request();
        drop(tx);
        let _ = wait(py, done);
        return Err(e);
    }
    drop(tx);
    wait(py, done)
}

/// Runs `int8kit validate ARGS...` (`argv[0]` the program name; `--val` only names the samples) on evaluation
/// samples pulled from `batches` (the package's normalized batches: the recipe's float32 images when the line
/// gives one, else arrays by input name; with labels when `labelled`) while the models run the previous ones;
/// returns the exit status and, for 2, the error.
#[pyfunction]
#[pyo3(signature = (argv, batches, total, labelled))]
fn validate_iter(
    py: Python<'_>,
    argv: Vec<String>,
    batches: Bound<'_, PyAny>,
    total: Option<u64>,
    labelled: bool,
) -> PyResult<(u8, Option<String>)> {
    let cli = match parse_cli(&argv) {
        Ok(cli) => cli,
        Err(status) => return Ok(status),
    };
    let (model, feed) = match &cli.command {
        int8kit::Command::Validate(a) => (a.model.clone(), a.streamed_feed().map_err(input_error)?),
        _ => return Err(Int8kitError::new_err("internal: validate_iter runs `validate`")),
    };
    let (tx, rx) = sync_channel::<Result<Batch, DatasetError>>(2);
    let (done_tx, done_rx) = sync_channel(1);
    std::thread::spawn(move || {
        let result = graph::Model::load(&model).map_err(anyhow::Error::new).and_then(|m| {
            let inputs = m.feed_inputs().iter().map(|i| i.name.clone()).collect();
            let mut queued = Queued { rx, inputs };
            let val = evaluate::validate::GivenVal { batches: &mut queued, total, labelled };
            int8kit::run_validate_streamed(cli, val)
        });
        let _ = done_tx.send(exit_status(result));
    });
    feed_worker(py, &batches, &feed, tx, done_rx)
}

/// Calibrates `model` over batches pulled from `batches` (an iterator of the package's normalized batches)
/// and returns the `.hist` bytes. `recipe`: the TOML of the recipe that made the batches (images), else the
/// arrays are fed by input name. `seed` chooses nothing here and is recorded, as a folder run records its
/// `--seed`. `smooth`: `auto`, `off` or an alpha, as `--smooth` takes it (maxima from the first 64 samples).
#[pyfunction]
#[pyo3(signature = (model, batches, recipe, name, total, threads, tensors, device, quiet, seed=0, smooth="auto"))]
#[allow(clippy::too_many_arguments)]
fn calibrate_iter(
    py: Python<'_>,
    model: PathBuf,
    batches: Bound<'_, PyAny>,
    recipe: Option<String>,
    name: String,
    total: Option<u64>,
    threads: usize,
    tensors: String,
    device: String,
    quiet: bool,
    seed: u64,
    smooth: &str,
) -> PyResult<Py<PyBytes>> {
    int8kit::ui::init_logging(quiet);
    let feed = feed_of(recipe.as_deref())?;
    let selection = match tensors.as_str() {
        "quantizable" => calibrate::Selection::Quantizable,
        "all" => calibrate::Selection::All,
        other => return Err(InputError::new_err(format!("tensors={other:?}: use \"quantizable\" or \"all\""))),
    };
    let devices: runtime::Devices =
        device.parse().map_err(|e: String| InputError::new_err(format!("device={device:?}: {e}")))?;
    runtime::use_device(devices.first());
    let smooth = int8kit::args::parse_smooth(smooth).map_err(|e| InputError::new_err(format!("smooth: {e}")))?;
    let options = calibrate::CalibrateOptions {
        smooth,
        threads,
        selection,
        device: devices,
        hold_out: calibrate::HoldOut::Count(0),
        seed,
        ..Default::default()
    };
    let (tx, rx) = sync_channel::<Result<Batch, DatasetError>>(2);
    let (done_tx, done_rx) = sync_channel(1);
    let worker_feed = feed.clone();
    let label = model.display().to_string();
    std::thread::spawn(move || {
        let bar = int8kit::ui::progress_bar("calibrate", "samples", quiet);
        let result = calibrate::load_model(&model).and_then(|m| {
            let inputs = m.feed_inputs().iter().map(|i| i.name.clone()).collect();
            let mut queued = Queued { rx, inputs };
            let samples = calibrate::GivenSamples { name, batches: &mut queued, total };
            calibrate::calibrate_batches(&m, samples, &worker_feed, &options, &mut int8kit::ui::reporter(&bar))
        });
        bar.finish_and_clear();
        let _ = done_tx.send(result.map_err(|e| anyhow::Error::new(e).context(format!("calibrating {label}"))));
    });
    let (hist, _summary) = feed_worker(py, &batches, &feed, tx, done_rx)?.map_err(input_error)?;
    let bytes = hist.to_json().map_err(|e| input_error(e.into()))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

/// Reads and checks a `.hist` file; returns its bytes.
#[pyfunction]
fn read_hist(py: Python<'_>, path: PathBuf) -> PyResult<Py<PyBytes>> {
    let hist = histograms::HistFile::read(&path).map_err(|e| input_error(e.into()))?;
    let bytes = hist.to_json().map_err(|e| input_error(e.into()))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

fn parse_hist(bytes: &[u8], origin: &str) -> PyResult<histograms::HistFile> {
    histograms::HistFile::from_bytes(bytes, std::path::Path::new(origin)).map_err(|e| input_error(e.into()))
}

/// Writes `.hist` bytes to `path` atomically (checked first: only statistics int8kit made are written).
#[pyfunction]
fn write_hist(bytes: &[u8], path: PathBuf) -> PyResult<()> {
    parse_hist(bytes, "statistics")?.write(&path).map_err(|e| input_error(e.into()))
}

/// Merges the `.hist` bytes of every shard of one calibration, as `int8kit merge` does.
#[pyfunction]
fn merge_hists(py: Python<'_>, parts: Vec<Vec<u8>>) -> PyResult<Py<PyBytes>> {
    let parts = parts
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let origin = format!("statistics {i}");
            parse_hist(b, &origin).map(|h| (PathBuf::from(origin), h))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let merged = histograms::merge(&parts).map_err(|e| input_error(e.into()))?;
    let bytes = merged.to_json().map_err(|e| input_error(e.into()))?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

/// `int8kit lint --json`'s findings of a Q/DQ model, as JSON.
#[pyfunction]
fn lint_json(path: PathBuf) -> PyResult<String> {
    let model = graph::Model::load(&path).map_err(|e| input_error(e.into()))?;
    let findings = placement::lint::lint(&model)
        .map_err(|e| input_error(anyhow::Error::new(e).context(format!("linting {}", path.display()))))?;
    serde_json::to_string(&findings).map_err(|e| Int8kitError::new_err(e.to_string()))
}

/// The float32 values a recipe (TOML text) makes of these image files at `size` (needed when the recipe lists
/// several sizes), as one batch: `(bytes, shape)`.
#[pyfunction]
#[pyo3(signature = (paths, recipe, size=None))]
fn preprocess(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    recipe: String,
    size: Option<[u32; 2]>,
) -> PyResult<(Py<PyBytes>, Vec<usize>)> {
    let recipe = Recipe::from_toml(&recipe, "recipe").map_err(|e| input_error(e.into()))?;
    let recipe = match size {
        Some(size) => {
            let one = recipe.at(size);
            one.validate("size").map_err(|e| input_error(e.into()))?;
            one
        }
        None if recipe.is_multi_size() => {
            return Err(InputError::new_err(format!(
                "the recipe lists several sizes {:?}: pass size=(height, width) for the one to make",
                recipe.all_sizes()
            )))
        }
        None => recipe,
    };
    let per = recipe.image_len();
    let mut values = vec![0f32; per * paths.len()];
    py.detach(|| {
        for (path, out) in paths.iter().zip(values.chunks_mut(per.max(1))) {
            datasets::preprocess_file(path, &recipe, out)?;
        }
        Ok::<_, DatasetError>(())
    })
    .map_err(|e| input_error(e.into()))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((PyBytes::new(py, &bytes).unbind(), recipe.batch_shape(paths.len()).to_vec()))
}

/// The names of the inputs a model is fed (initializer-backed graph inputs left out).
#[pyfunction]
fn input_names(model: PathBuf) -> PyResult<Vec<String>> {
    let model = graph::Model::load(&model).map_err(|e| input_error(e.into()))?;
    Ok(model.feed_inputs().iter().map(|i| i.name.clone()).collect())
}

/// The preset recipes' TOML (`imagenet`, `clip`).
#[pyfunction]
fn preset_recipe(name: &str) -> PyResult<String> {
    let preset = match name {
        "imagenet" => datasets::Preset::Imagenet,
        "clip" => datasets::Preset::Clip,
        other => return Err(InputError::new_err(format!("preset {other:?}: use \"imagenet\" or \"clip\""))),
    };
    Ok(Recipe::preset(preset).to_toml())
}

/// The hold-out priority of the sample at `index` under `seed`: a stream holds back the samples of lowest
/// priority, as a folder run does (`datasets::hold_out_priority`).
#[pyfunction]
fn hold_out_priority(seed: u64, index: u64) -> u64 {
    datasets::hold_out_priority(seed, index)
}

/// How many of `samples` a run holds back: the command line's rule for `--hold-out` (`None`: auto, a tenth,
/// 2 to 64, none below 20), at most all but one.
#[pyfunction]
#[pyo3(signature = (samples, hold_out=None))]
fn hold_out_count(samples: usize, hold_out: Option<usize>) -> usize {
    let rule = hold_out.map_or(calibrate::HoldOut::Auto, calibrate::HoldOut::Count);
    rule.count(samples).min(samples.saturating_sub(1))
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Int8kitError", m.py().get_type::<Int8kitError>())?;
    m.add("InputError", m.py().get_type::<InputError>())?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(validate_iter, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate_iter, m)?)?;
    m.add_function(wrap_pyfunction!(read_hist, m)?)?;
    m.add_function(wrap_pyfunction!(write_hist, m)?)?;
    m.add_function(wrap_pyfunction!(merge_hists, m)?)?;
    m.add_function(wrap_pyfunction!(lint_json, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(preset_recipe, m)?)?;
    m.add_function(wrap_pyfunction!(input_names, m)?)?;
    m.add_function(wrap_pyfunction!(hold_out_priority, m)?)?;
    m.add_function(wrap_pyfunction!(hold_out_count, m)?)?;
    Ok(())
}
