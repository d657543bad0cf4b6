//! Reports of a validation run: `report.json` (versioned), `summary.csv`, `per_class.csv`, `junit.xml` and a
//! self-contained `report.html` with inline SVG plots. Pure data and formatting: no model execution here.

#![forbid(unsafe_code)]

mod html;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use html::render_html;

/// The `format` value of report.json.
pub const REPORT_FORMAT: &str = "int8kit.report";
/// The report.json version; bump on any incompatible change.
pub const REPORT_VERSION: u32 = 8;

/// Errors writing reports or reading a baseline.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A baseline could not be read safely (missing, not a regular file, too large).
    #[error(transparent)]
    Input(#[from] safe_io::ReadError),
    /// A report file could not be written.
    #[error(transparent)]
    Write(#[from] safe_io::WriteError),
    /// The output folder could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A CSV report could not be encoded.
    #[error("cannot encode {file}: {source}")]
    Csv {
        /// The report's file name.
        file: &'static str,
        /// The CSV writer's error.
        source: csv::Error,
    },
    /// report.json could not be encoded.
    #[error("cannot encode report.json: {0}")]
    Json(#[source] serde_json::Error),
    /// A report.json (a baseline) cannot be used.
    #[error("{path}: not a usable int8kit report: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Accuracy and speed of one model on the evaluation images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// Top-1 (share); `None` (JSON `null`) on an unlabelled folder.
    pub top1: Option<f64>,
    /// Top-5 (share); `None` (JSON `null`) on an unlabelled folder.
    pub top5: Option<f64>,
    /// Per class: (correct, images); empty on an unlabelled folder.
    pub per_class: Vec<(u64, u64)>,
    /// Images per second of the model runs alone (decoding excluded).
    pub images_per_s: f64,
}

/// FP32 against INT8 on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Images compared.
    pub images: u64,
    /// The FP32 model.
    pub fp32: ModelMetrics,
    /// The INT8 model.
    pub int8: ModelMetrics,
    /// Share of images where both models predict the same class.
    pub agreement: f64,
    /// Mean cosine similarity of the FP32 and INT8 outputs (logits or embeddings), per image.
    pub cosine_mean: f64,
    /// Signal-to-quantization-noise ratio of the outputs over all images, in dB; infinite (JSON `null`) when
    /// the outputs are identical.
    #[serde(with = "infinite_as_null")]
    pub sqnr_db: f64,
}

/// The model converted to a float type without any Q/DQ (the middle row of FP32 -> FP16 -> INT8), against
/// FP32 on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatRow {
    /// The float type (`"fp16"`).
    pub float_type: String,
    /// Its accuracy and speed.
    pub metrics: ModelMetrics,
    /// Share of images where it and FP32 predict the same class.
    pub agreement: f64,
    /// Mean cosine similarity of its outputs and FP32's, per image.
    pub cosine_mean: f64,
    /// Signal-to-noise ratio of its outputs against FP32's, in dB; infinite (JSON `null`) when identical.
    #[serde(with = "infinite_as_null")]
    pub sqnr_db: f64,
}

/// One release criterion and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// Criterion name (the JUnit test case).
    pub name: String,
    /// Whether it holds.
    pub passed: bool,
    /// Measured value and the limit it was held to, in the criterion's unit.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// What was measured against what, in words.
    pub message: String,
    /// With a recipe of several input sizes: the size it was measured at (every criterion is held at each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
}

impl Criterion {
    /// The criterion's name with its size (`min-cosine@448x448`): the JUnit test case.
    pub fn case_name(&self) -> String {
        match self.size {
            Some([h, w]) => format!("{}@{h}x{w}", self.name),
            None => self.name.clone(),
        }
    }
}

/// FP32, INT8 and FP16 at one input size of a recipe of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeRow {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// FP32 against INT8 at this size.
    pub comparison: Comparison,
    /// FP32 against FP16 without Q/DQ at this size.
    pub fp16: Option<FloatRow>,
    /// Whether the INT8 model's statistics were measured at this size (false: statistics given with `--hist`
    /// from a calibration at other sizes).
    pub calibrated: bool,
}

/// FP32, INT8 and FP16 on the `.npz` samples of one shape, in a folder of samples of several shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeRow {
    /// Each array's name and shape past the batch axis.
    pub shape: Vec<ArrayShape>,
    /// FP32 against INT8 on these samples.
    pub comparison: Comparison,
    /// FP32 against FP16 without Q/DQ on these samples.
    pub fp16: Option<FloatRow>,
}

/// One array of a sample: its name and its shape past the batch axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayShape {
    /// The model input it feeds.
    pub name: String,
    /// Dimensions past the batch axis.
    pub dims: Vec<usize>,
}

impl ShapeRow {
    /// The shape in words: `input_ids [12], attention_mask [12]`.
    pub fn label(&self) -> String {
        self.shape.iter().map(|a| format!("{} {:?}", a.name, a.dims)).collect::<Vec<_>>().join(", ")
    }
}

/// A tensor's range, with a coarse histogram for plotting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorPlot {
    /// Tensor name.
    pub name: String,
    /// Whether it is quantized.
    pub quantized: bool,
    /// Chosen clipping threshold.
    pub amax: f32,
    /// Largest |x| seen.
    pub max_abs: f32,
    /// Share of values beyond amax.
    pub clipped: f64,
    /// Counts of |x| in equal bins over [0, plot_range].
    pub plot_range: f64,
    /// Counts of the coarse histogram over [0, plot_range].
    pub counts: Vec<u64>,
}

/// One node of a sensitivity ranking, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityRow {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// Share of GEMM/Conv FLOPs.
    pub flop_share: f64,
    /// Output divergence when this node alone is INT8.
    pub divergence: f64,
    /// Top-1 change when this node alone is INT8, pp (`None` when measured without labels).
    pub top1_delta_pp: Option<f64>,
    /// Whether this report's INT8 model runs the node in INT8.
    pub int8: bool,
}

/// The baseline report a run was compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRef {
    /// The baseline report's path, as given.
    pub file: String,
    /// The baseline's model.
    pub model: String,
    /// Its SHA-256.
    pub model_sha256: String,
    /// Whether the baseline is of another model (`--baseline-across-models`).
    pub across_models: bool,
}

/// What computed each row of a report: `onnxruntime, graph optimization all` (ONNX Runtime with its graph
/// rewrites), `onnxruntime, graph optimization disabled` (the graph's nodes as written: FP16 graphs, whose
/// results ONNX Runtime's CPU rewrites change) or `tensorrt (trtexec)`. `unrecorded` in reports before
/// version 5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The FP32 reference.
    pub fp32: String,
    /// The INT8 (Q/DQ) model.
    pub int8: String,
    /// The FP16 model without Q/DQ.
    pub fp16: String,
}

impl Default for Evaluation {
    fn default() -> Evaluation {
        let unrecorded = || "unrecorded".to_string();
        Evaluation { fp32: unrecorded(), int8: unrecorded(), fp16: unrecorded() }
    }
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Tool versions: int8kit, onnxruntime.
    pub tools: Vec<(String, String)>,
    /// Model file name.
    pub model: String,
    /// SHA-256 of the model and its external data.
    pub model_sha256: String,
    /// The preprocessing recipe.
    pub recipe: serde_json::Value,
    /// Scale method (the global one; per-tensor choices are in ranges.json).
    pub method: String,
    /// How the method, attention precision and float type were chosen: `measurement` (the `auto` search on
    /// held-back calibration samples), `flags`, or `defaults` (ranges.json says why).
    #[serde(default)]
    pub chosen_by: String,
    /// The INT8 model measured against the float model on calibration samples held back from the statistics:
    /// ranges.json's `self_check` (null in reports before version 6).
    #[serde(default)]
    pub self_check: serde_json::Value,
    /// How the INT8 weights were rounded and why: ranges.json's `weight_rounding` (null where no layer could
    /// be rounded otherwise than to nearest, and in reports before version 8).
    #[serde(default)]
    pub weight_rounding: serde_json::Value,
    /// Precision lists applied.
    pub precision: serde_json::Value,
    /// What ran the INT8 model.
    pub engine: String,
    /// Calibration images.
    pub calibration_images: u64,
    /// Seconds of the calibration pass.
    pub calibration_seconds: f64,
    /// The validation folder.
    pub validation_folder: String,
    /// SHA-256 over the evaluated images' relative paths, in order: identifies the evaluation set (and its
    /// labels), so that a baseline is only compared on the same images.
    pub validation_list_sha256: String,
    /// For samples streamed from a Python iterable (no folder): the identity of the bytes fed, the sum modulo
    /// 2^256 of each sample's SHA-256 (as the `.hist`'s `samples_sha256`); a baseline is compared on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_samples_sha256: Option<String>,
    /// The baseline this run was held to, if any.
    pub baseline: Option<BaselineRef>,
    /// Class names by index.
    pub classes: Vec<String>,
    /// Share of GEMM/Conv FLOPs in INT8.
    pub int8_flop_share: f64,
    /// The runtime the INT8 model's Q/DQ placement is for (`tensorrt`, `onnxruntime`).
    pub target: String,
    /// The float type of the INT8 model's non-INT8 parts (`fp32`, `fp16`).
    pub float_type: String,
    /// What the reference row (`comparison.fp32`, the model as given) computes in: `fp32`, or `fp16`/`bf16`
    /// for a model stored and computing so. Added within version 7: a report without it reads as `fp32`.
    #[serde(default = "fp32")]
    pub reference: String,
    /// How each row's outputs were computed (the ONNX Runtime graph optimization level, or trtexec).
    #[serde(default)]
    pub evaluation: Evaluation,
    /// FP32 against INT8.
    pub comparison: Comparison,
    /// FP32 against the model converted to FP16 without Q/DQ.
    pub fp16: Option<FloatRow>,
    /// The release criteria.
    pub criteria: Vec<Criterion>,
    /// Whether every criterion holds.
    pub passed: bool,
    /// Quantized tensors with their histograms.
    pub tensors: Vec<TensorPlot>,
    /// Sensitivity ranking, most damaging first (from `validate --sensitivity`); empty otherwise.
    #[serde(default)]
    pub sensitivity: Vec<SensitivityRow>,
    /// With a recipe of several input sizes: each size's rows, in the recipe's order (`comparison` and `fp16`
    /// are then over every size's images together, and `criteria` hold at each size). Absent for one size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<SizeRow>,
    /// With `.npz` samples of several shapes: each shape's rows, in the order the shapes first appear in the
    /// folder (`comparison` and `fp16` are over every sample). Absent when every sample has one shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shapes: Vec<ShapeRow>,
    /// A report merged from shards (`validate --shard`, `int8kit merge`): each shard's speeds, which the
    /// comparison's images/s (all images over all shards' seconds) sums up. Absent for one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardSpeed>,
}

/// One shard's share of a merged validation and the speeds it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSpeed {
    /// 1-based shard number.
    pub index: usize,
    /// Images it evaluated.
    pub images: u64,
    /// FP32 images/s on its machine.
    pub fp32_images_per_s: f64,
    /// INT8 images/s on its machine.
    pub int8_images_per_s: f64,
}

fn fp32() -> String {
    "fp32".into()
}

/// [`Report::reference_label`] of a `reference` value.
pub fn reference_label(reference: &str) -> String {
    match reference {
        "fp32" => "FP32".into(),
        other => format!("source ({})", other.to_uppercase()),
    }
}

impl Report {
    /// How the reference row is named to people: `FP32`, or `source (FP16)` where the model as given computes
    /// in FP16 (its row is that model, not an FP32 one).
    pub fn reference_label(&self) -> String {
        reference_label(&self.reference)
    }

    /// The reference model's column in the CSV files: `fp32`, or `source_fp16` (`source_bf16`).
    fn reference_column(&self) -> String {
        match self.reference.as_str() {
            "fp32" => "fp32".into(),
            other => format!("source_{other}"),
        }
    }

    /// Reads a report.json (e.g. a baseline), checking its format and version.
    pub fn read(path: &Path) -> Result<Report, ReportError> {
        let bad = |message: String| ReportError::Read { path: path.into(), message };
        let text = safe_io::read_to_string(path, safe_io::limits::JSON, "a report.json")?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(REPORT_FORMAT) {
            return Err(bad(format!("format is not \"{REPORT_FORMAT}\"")));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            // Version 8 only added `weight_rounding`, 7 `sizes` and the criteria's `size`, 6 `chosen_by` and `self_check`, 5 `evaluation`, 4 only allowed a null
            // Top-1/Top-5 (unlabelled folders): versions 3 to 5 read as is (those fields unrecorded).
            Some(v) if (3..=REPORT_VERSION as u64).contains(&v) => {}
            // Version 3 only added the FP16 row, target and float type: a version 2 baseline still compares.
            Some(2) => {
                let mut value = value;
                if let Some(map) = value.as_object_mut() {
                    map.insert("target".into(), "unrecorded (report version 2)".into());
                    map.insert("float_type".into(), "fp32".into());
                    map.insert("fp16".into(), serde_json::Value::Null);
                }
                return serde_json::from_value(value).map_err(|e| bad(e.to_string()));
            }
            Some(v) if v < REPORT_VERSION as u64 => {
                return Err(bad(format!(
                    "report version {v} does not record which images it was evaluated on; re-run validate for \
                     the baseline with this int8kit (report version {REPORT_VERSION})"
                )))
            }
            other => return Err(bad(format!("version {other:?} is not supported (reads {REPORT_VERSION})"))),
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// report.json's bytes: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, ReportError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(ReportError::Json)?;
        json.push(b'\n');
        Ok(json)
    }

    /// summary.csv: one column per model (FP32, FP16 without Q/DQ, INT8), one row per metric; fidelity
    /// rows are against FP32.
    pub fn summary_csv(&self) -> Result<String, ReportError> {
        let cell = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        let rows = summary_rows(&self.comparison, self.fp16.as_ref());
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |source| ReportError::Csv { file: "summary.csv", source };
        let int8 = format!("int8_{}", self.float_type);
        let reference = self.reference_column();
        if self.sizes.is_empty() {
            w.write_record(["metric", reference.as_str(), "fp16", int8.as_str()]).map_err(err)?;
            for (name, a, f, b) in rows {
                w.write_record([name.to_string(), cell(a), cell(f), cell(b)]).map_err(err)?;
            }
            return finish(w, "summary.csv");
        }
        // Several sizes: a `size` column, `all` (every size's images together) then each size.
        w.write_record(["size", "metric", reference.as_str(), "fp16", int8.as_str()]).map_err(err)?;
        for (name, a, f, b) in rows {
            w.write_record(["all".to_string(), name.to_string(), cell(a), cell(f), cell(b)]).map_err(err)?;
        }
        for row in &self.sizes {
            let size = format!("{}x{}", row.size[0], row.size[1]);
            for (name, a, f, b) in summary_rows(&row.comparison, row.fp16.as_ref()) {
                w.write_record([size.clone(), name.to_string(), cell(a), cell(f), cell(b)]).map_err(err)?;
            }
        }
        finish(w, "summary.csv")
    }

    /// With several sizes: the one whose INT8 model does worst (most failed criteria, then the lowest output
    /// cosine against FP32).
    pub fn worst_size(&self) -> Option<[u32; 2]> {
        let failed = |size: [u32; 2]| self.criteria.iter().filter(|c| c.size == Some(size) && !c.passed).count();
        self.sizes
            .iter()
            .max_by(|a, b| {
                failed(a.size).cmp(&failed(b.size)).then(b.comparison.cosine_mean.total_cmp(&a.comparison.cosine_mean))
            })
            .map(|r| r.size)
    }

    /// per_class.csv: one row per class.
    pub fn per_class_csv(&self) -> Result<String, ReportError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |source| ReportError::Csv { file: "per_class.csv", source };
        let reference = self.reference_column();
        w.write_record([
            "class",
            "name",
            "images",
            &format!("{reference}_correct"),
            "int8_correct",
            &format!("{reference}_accuracy"),
            "int8_accuracy",
            "delta_pp",
        ])
        .map_err(err)?;
        for (i, ((a, n), (b, _))) in
            self.comparison.fp32.per_class.iter().zip(&self.comparison.int8.per_class).enumerate()
        {
            let acc = |k: u64| if *n > 0 { k as f64 / *n as f64 } else { 0.0 };
            let name = safe_io::csv_text(self.classes.get(i).map_or("", String::as_str)).into_owned();
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
            x.push_str(&format!("  <testcase classname=\"int8kit.validate\" name=\"{}\">", escape(&c.case_name())));
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
        write_atomic(&dir.join("report.json"), &self.to_json()?)?;
        write_atomic(&dir.join("summary.csv"), self.summary_csv()?.as_bytes())?;
        write_atomic(&dir.join("per_class.csv"), self.per_class_csv()?.as_bytes())?;
        write_atomic(&dir.join("junit.xml"), self.junit_xml().as_bytes())?;
        write_atomic(&dir.join("report.html"), render_html(self).as_bytes())?;
        Ok(())
    }
}

/// A summary's rows (metric, FP32, FP16, INT8); empty cells are not measured (FP16 row absent, or no labels
/// for Top-1/Top-5).
type SummaryRow = (&'static str, Option<f64>, Option<f64>, Option<f64>);

fn summary_rows(c: &Comparison, h: Option<&FloatRow>) -> [SummaryRow; 7] {
    [
        ("images", Some(c.images as f64), h.map(|_| c.images as f64), Some(c.images as f64)),
        ("top1", c.fp32.top1, h.and_then(|h| h.metrics.top1), c.int8.top1),
        ("top5", c.fp32.top5, h.and_then(|h| h.metrics.top5), c.int8.top5),
        ("images_per_s", Some(c.fp32.images_per_s), h.map(|h| h.metrics.images_per_s), Some(c.int8.images_per_s)),
        ("agreement", None, h.map(|h| h.agreement), Some(c.agreement)),
        ("cosine_mean", None, h.map(|h| h.cosine_mean), Some(c.cosine_mean)),
        ("sqnr_db", None, h.map(|h| h.sqnr_db), Some(c.sqnr_db)),
    ]
}

fn finish(w: csv::Writer<Vec<u8>>, file: &'static str) -> Result<String, ReportError> {
    let csv_error = |source: csv::Error| ReportError::Csv { file, source };
    let bytes = w.into_inner().map_err(|e| csv_error(e.into_error().into()))?;
    // Every field written was a Rust string, so the bytes are UTF-8.
    String::from_utf8(bytes).map_err(|e| csv_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into()))
}

/// +infinity as JSON `null` (JSON has no infinity), and back: for `#[serde(with = ...)]` on an SQNR.
pub mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v`, or `null` when it is not finite.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    /// Reads a number, or `null` as +infinity.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// Escapes text for XML/HTML content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir { path: dir.into(), source })?;
    }
    Ok(safe_io::write_atomic(path, bytes)?)
}
