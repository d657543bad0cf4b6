//! Top-1 of a classifier, or zero-shot Top-1 of an embedding model against class prototypes, over a
//! labelled image folder, through ONNX Runtime.

use std::path::Path;

use datasets::{BatchStream, Dataset, Recipe, StreamOptions};

use crate::AnalyzeError;

/// Class prototypes from a numpy `.npy` file (float32, C order, shape [classes, dim]), L2-normalised.
pub fn load_prototypes(path: &Path) -> Result<Vec<Vec<f32>>, AnalyzeError> {
    let bytes = std::fs::read(path).map_err(|source| AnalyzeError::Io { path: path.into(), source })?;
    let bad = |message: String| AnalyzeError::Model { path: path.into(), message };
    if bytes.len() < 12 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file".into()));
    }
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = String::from_utf8_lossy(
        bytes.get(start..start + header_len).ok_or_else(|| bad("truncated .npy header".into()))?,
    );
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad(format!("prototypes must be float32 little-endian in C order (header {header})")));
    }
    let shape: Vec<usize> = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(['(', ')']).nth(1))
        .map(|s| s.split(',').filter_map(|d| d.trim().parse().ok()).collect())
        .unwrap_or_default();
    let [classes, dim] = shape[..] else { return Err(bad(format!("expected a 2-D array, header {header}"))) };
    let data = &bytes[start + header_len..];
    if data.len() != classes * dim * 4 || dim == 0 {
        return Err(bad(format!("{} data bytes for shape [{classes}, {dim}]", data.len())));
    }
    let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(values.chunks(dim).map(normalised).collect())
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| if n > 0.0 { x / n } else { *x }).collect()
}

/// Class scores of one output row: the row itself, or its cosine against each prototype.
pub fn scores(row: &[f32], prototypes: Option<&[Vec<f32>]>) -> Vec<f32> {
    match prototypes {
        None => row.to_vec(),
        Some(p) => {
            let r = normalised(row);
            p.iter().map(|c| c.iter().zip(&r).map(|(a, b)| a * b).sum()).collect()
        }
    }
}

pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]).then(b.cmp(&a))).unwrap_or(0)
}

pub struct EvalResult {
    pub top1: f64,
    pub images: usize,
    pub seconds: f64,
}

/// Runs `model_path` over `dataset` and counts correct argmax predictions.
pub fn evaluate(
    model_path: &Path,
    dataset: &Dataset,
    recipe: &Recipe,
    prototypes: Option<&[Vec<f32>]>,
) -> Result<EvalResult, AnalyzeError> {
    let m = graph::Model::load(model_path)?;
    let no_output = || AnalyzeError::Model { path: model_path.into(), message: "the model has no output".into() };
    let output = m.proto.graph.output.first().ok_or_else(no_output)?.name.clone();
    let input = m.resolve_input(recipe.name.as_deref())?.name.clone();
    let mut cfg = runtime::SessionConfig::new(model_path.display().to_string());
    cfg.external_data_dir = Some(m.dir.clone());
    let mut session = runtime::session_from_bytes(&m.to_bytes()?, &cfg)?;
    let start = std::time::Instant::now();
    let (mut right, mut n) = (0usize, 0usize);
    for batch in BatchStream::new(dataset, recipe, StreamOptions { batch_size: 64, ..Default::default() }) {
        let batch = batch.map_err(|e| AnalyzeError::Model { path: model_path.into(), message: e.to_string() })?;
        let label = model_path.display().to_string();
        runtime::run_f32(
            &mut session,
            &label,
            &input,
            &batch.shape,
            &batch.data,
            std::slice::from_ref(&output),
            |o| {
                let width = o[0].len() / batch.items.len().max(1);
                for (row, item) in o[0].chunks(width.max(1)).zip(&batch.items) {
                    right += (Some(argmax(&scores(row, prototypes))) == item.label) as usize;
                    n += 1;
                }
            },
        )?;
    }
    Ok(EvalResult { top1: right as f64 / n.max(1) as f64, images: n, seconds: start.elapsed().as_secs_f64() })
}
