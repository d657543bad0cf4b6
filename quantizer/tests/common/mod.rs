//! What the integration tests share: a model calibrated with some samples held back, and a probe of those.

use std::path::Path;

use calibrate::{calibrate, CalibrateOptions};
use datasets::Feed;
use quantizer::measure::{Probe, ProbeOptions};
use quantizer::Quantizer;

/// `model` calibrated on `samples` with `options` (which hold some back), and a CPU probe of the held-back
/// samples in batches of `batch_size` on `threads` threads.
pub fn calibrated_with_probe(
    model: &Path,
    samples: &Path,
    feed: &Feed,
    options: &CalibrateOptions,
    batch_size: usize,
    threads: usize,
) -> (Quantizer, Probe) {
    let (hist, summary) = calibrate(model, samples, feed, options, &mut |_, _| {}).unwrap();
    let quantizer = Quantizer::load(model, hist).unwrap();
    let held = summary.held_out.expect("samples held back");
    let probe_options =
        ProbeOptions { batch_size, threads, on_bad_image: datasets::OnBadImage::Fail, device: runtime::Device::Cpu };
    let probe = Probe::new(quantizer.model(), &held, feed, probe_options).unwrap();
    (quantizer, probe)
}
