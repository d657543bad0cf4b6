//! `validate` on samples streamed in place of a `--val` folder (the Python API's iterables) gives the folder's
//! rows, shape by shape: the stream is regrouped into the folder's evaluation batches whatever its own batching.

use datasets::{BatchStream, Dataset, Feed, StreamOptions};
use evaluate::validate::{validate_given, Calibration, GivenVal};
use evaluate::{validate, Report, ValidateConfig};
use std::path::Path;
use test_support::text_tower::write_three_length_set;

fn config(model: &Path, calib: &Path, val: &Path, out: std::path::PathBuf) -> ValidateConfig {
    let calib = Calibration::Folder(calib.into());
    ValidateConfig { eval_batch: Some(4), ..ValidateConfig::new(model.into(), calib, val.into(), Feed::Tensors, out) }
}

/// A report's rows without speeds and durations (the only things two runs may differ in).
fn untimed(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(k, _)| !k.ends_with("_per_s") && !k.ends_with("seconds"))
            .map(|(k, v)| (k, untimed(v)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(untimed).collect(),
        other => other,
    }
}

/// A shape's row: its arrays' dimensions (sorted) and its comparison.
type ShapeRow = (Vec<Vec<usize>>, serde_json::Value);

/// Each shape's row, and the comparison of all.
fn rows(report: &Report) -> (Vec<ShapeRow>, serde_json::Value) {
    let shapes = report
        .shapes
        .iter()
        .map(|row| {
            let mut dims: Vec<Vec<usize>> = row.shape.iter().map(|a| a.dims.clone()).collect();
            dims.sort();
            (dims, untimed(serde_json::to_value(&row.comparison).unwrap()))
        })
        .collect();
    (shapes, untimed(serde_json::to_value(&report.comparison).unwrap()))
}

#[test]
fn samples_of_several_shapes_streamed_one_by_one_give_the_folders_rows_shape_by_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (model, calib, val) = write_three_length_set(dir.path(), 30);
    let listed = validate(&config(&model, &calib, &val, dir.path().join("listed")), &mut |_, _, _| {}).unwrap();

    // The same samples in the same order, one per batch, so that the lengths take turns in the stream.
    let samples = Dataset::flat(&val).unwrap();
    let mut stream = BatchStream::new(&samples, &Feed::Tensors, StreamOptions { batch_size: 1, ..Default::default() });
    let given = GivenVal { batches: &mut stream, total: Some(30), labelled: false };
    let name = Path::new("<iterable>");
    let streamed =
        validate_given(&config(&model, &calib, name, dir.path().join("streamed")), given, &mut |_, _, _| {}).unwrap();

    assert_eq!(listed.shapes.len(), 3, "one row per length");
    assert_eq!(rows(&streamed), rows(&listed));
    assert_eq!(streamed.comparison.images, 30);
    assert_eq!(streamed.validation_folder, "<iterable>");
    assert!(streamed.validation_samples_sha256.as_ref().is_some_and(|s| s.len() == 64));
    assert!(listed.validation_samples_sha256.is_none());
    assert!(dir.path().join("streamed/report.json").is_file());
}
