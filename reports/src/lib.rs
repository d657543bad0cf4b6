//! Reports of a validation run: `report.json` (versioned), `summary.csv`, `per_class.csv`, `junit.xml` and a
//! self-contained `report.html` with inline SVG plots. Pure data and formatting: no model execution here.

mod html;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use html::render_html;

pub const REPORT_FORMAT: &str = "int8kit.report";
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: not a usable int8kit report: {message}")]
    Read { path: PathBuf, message: String },
}

/// Accuracy of one model on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub top1: f64,
    pub top5: f64,
    /// Per class: (correct, images).
    pub per_class: Vec<(u64, u64)>,
    /// Images per second of the model runs alone (decoding excluded).
    pub images_per_s: f64,
}

/// FP32 against INT8 on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub images: u64,
    pub fp32: ModelMetrics,
    pub int8: ModelMetrics,
    /// Share of images where both models predict the same class.
    pub agreement: f64,
    /// Mean cosine similarity of the FP32 and INT8 outputs (logits or embeddings), per image.
    pub cosine_mean: f64,
    /// Signal-to-quantization-noise ratio of the outputs over all images, in dB.
    pub sqnr_db: f64,
}

/// One release criterion and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    pub name: String,
    pub passed: bool,
    /// Measured value and the limit it was held to, in the criterion's unit.
    pub measured: f64,
    pub limit: f64,
    pub message: String,
}

/// A tensor's range, with a coarse histogram for plotting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorPlot {
    pub name: String,
    pub quantized: bool,
    pub amax: f32,
    pub max_abs: f32,
    pub clipped: f64,
    /// Counts of |x| in equal bins over [0, plot_range].
    pub plot_range: f64,
    pub counts: Vec<u64>,
}

/// One node of a sensitivity ranking, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    pub node: String,
    pub op: String,
    pub flop_share: f64,
    /// Output divergence when this node alone is INT8.
    pub divergence: f64,
    /// Top-1 change when this node alone is INT8, pp.
    pub top1_delta_pp: f64,
    /// Whether this report's INT8 model runs the node in INT8.
    pub int8: bool,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub version: u32,
    /// Tool versions: int8kit, onnxruntime.
    pub tools: Vec<(String, String)>,
    pub model: String,
    pub model_sha256: String,
    pub recipe: serde_json::Value,
    pub method: String,
    pub precision: serde_json::Value,
    pub engine: String,
    pub calibration_images: u64,
    pub calibration_seconds: f64,
    pub validation_folder: String,
    pub classes: Vec<String>,
    pub int8_flop_share: f64,
    pub comparison: Comparison,
    pub criteria: Vec<Criterion>,
    pub passed: bool,
    pub tensors: Vec<TensorPlot>,
    /// Sensitivity ranking, most damaging first (from `validate --sensitivity`); empty otherwise.
    #[serde(default)]
    pub sensitivity: Vec<SensitivityRow>,
}

impl Report {
    pub fn read(path: &Path) -> Result<Report, ReportError> {
        let bad = |message: String| ReportError::Read { path: path.into(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(REPORT_FORMAT) {
            return Err(bad(format!("format is not \"{REPORT_FORMAT}\"")));
        }
        if value.get("version").and_then(|v| v.as_u64()) != Some(REPORT_VERSION as u64) {
            return Err(bad(format!("version is not {REPORT_VERSION}")));
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    pub fn summary_csv(&self) -> Result<String, ReportError> {
        let c = &self.comparison;
        let rows = [
            ("images", c.images as f64, c.images as f64),
            ("top1", c.fp32.top1, c.int8.top1),
            ("top5", c.fp32.top5, c.int8.top5),
            ("images_per_s", c.fp32.images_per_s, c.int8.images_per_s),
        ];
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| ReportError::Write { path: "summary.csv".into(), message: e.to_string() };
        w.write_record(["metric", "fp32", "int8"]).map_err(err)?;
        for (name, a, b) in rows {
            w.write_record([name.to_string(), a.to_string(), b.to_string()]).map_err(err)?;
        }
        for (name, v) in [("agreement", c.agreement), ("cosine_mean", c.cosine_mean), ("sqnr_db", c.sqnr_db)] {
            w.write_record([name.to_string(), String::new(), v.to_string()]).map_err(err)?;
        }
        finish(w, "summary.csv")
    }

    pub fn per_class_csv(&self) -> Result<String, ReportError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| ReportError::Write { path: "per_class.csv".into(), message: e.to_string() };
        w.write_record([
            "class",
            "name",
            "images",
            "fp32_correct",
            "int8_correct",
            "fp32_accuracy",
            "int8_accuracy",
            "delta_pp",
        ])
        .map_err(err)?;
        for (i, ((a, n), (b, _))) in
            self.comparison.fp32.per_class.iter().zip(&self.comparison.int8.per_class).enumerate()
        {
            let acc = |k: u64| if *n > 0 { k as f64 / *n as f64 } else { 0.0 };
            let name = self.classes.get(i).cloned().unwrap_or_default();
            w.write_record([
                i.to_string(),
                name,
                n.to_string(),
                a.to_string(),
                b.to_string(),
                acc(*a).to_string(),
                acc(*b).to_string(),
                format!("{:.2}", 100.0 * (acc(*b) - acc(*a))),
            ])
            .map_err(err)?;
        }
        finish(w, "per_class.csv")
    }

    /// One test case per criterion, so CI systems list them.
    pub fn junit_xml(&self) -> String {
        let failures = self.criteria.iter().filter(|c| !c.passed).count();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuite name=\"int8kit validate {}\" tests=\"{}\" failures=\"{failures}\">\n",
            escape(&self.model),
            self.criteria.len()
        ));
        for c in &self.criteria {
            x.push_str(&format!("  <testcase classname=\"int8kit.validate\" name=\"{}\">", escape(&c.name)));
            if !c.passed {
                x.push_str(&format!("<failure message=\"{}\"/>", escape(&c.message)));
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        x
    }

    /// Writes report.json, summary.csv, per_class.csv, junit.xml and report.html into `dir`, each through a
    /// temporary file and a rename.
    pub fn write_all(&self, dir: &Path) -> Result<(), ReportError> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| ReportError::Write { path: dir.join("report.json"), message: e.to_string() })?;
        json.push(b'\n');
        write_atomic(&dir.join("report.json"), &json)?;
        write_atomic(&dir.join("summary.csv"), self.summary_csv()?.as_bytes())?;
        write_atomic(&dir.join("per_class.csv"), self.per_class_csv()?.as_bytes())?;
        write_atomic(&dir.join("junit.xml"), self.junit_xml().as_bytes())?;
        write_atomic(&dir.join("report.html"), render_html(self).as_bytes())?;
        Ok(())
    }
}

fn finish(w: csv::Writer<Vec<u8>>, name: &str) -> Result<String, ReportError> {
    let bytes = w.into_inner().map_err(|e| ReportError::Write { path: name.into(), message: e.to_string() })?;
    String::from_utf8(bytes).map_err(|e| ReportError::Write { path: name.into(), message: e.to_string() })
}

/// Escapes text for XML/HTML content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ReportError::Write { path: path.into(), message: e.to_string() })?;
    }
    graph::write_atomic(path, bytes).map_err(|e| ReportError::Write { path: path.into(), message: e.to_string() })
}
