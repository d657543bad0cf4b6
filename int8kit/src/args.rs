//! Argument groups shared by several subcommands, and the command-line spellings of library enums.

use std::path::{Path, PathBuf};

use analyze::placement::{AttentionPrecision, FloatType, PlacementOptions, PrecisionFile, Target};
use analyze::scales::Method;
use analyze::AnalyzeOptions;
use anyhow::Context;
use datasets::{Feed, OnBadImage, Preset, Recipe};
use histograms::Selection;

/// `--recipe R.toml | --preset P`: needed for image folders; a folder of `.npz` samples takes neither.
#[derive(Debug, Clone, clap::Args)]
#[group(required = false, multiple = false)]
pub struct RecipeArgs {
    /// Preprocessing recipe for image folders (TOML with an [input] table; see README); none for .npz samples.
    #[arg(long, value_name = "R.toml")]
    pub recipe: Option<PathBuf>,
    /// Named preprocessing.
    #[arg(long, value_name = "P")]
    pub preset: Option<PresetArg>,
}

impl RecipeArgs {
    /// The recipe file's contents, or the preset's; `None` when neither is given.
    pub fn load(&self) -> anyhow::Result<Option<Recipe>> {
        Ok(match (&self.recipe, self.preset) {
            (Some(path), _) => Some(Recipe::load(path)?),
            (None, Some(p)) => Some(Recipe::preset(p.into())),
            (None, None) => None,
        })
    }

    /// How `folder`'s samples are fed: images through the recipe (which must then be given), `.npz` samples
    /// as stored (a recipe given for them is refused, not ignored).
    pub fn feed(&self, folder: &Path) -> anyhow::Result<Feed> {
        Ok(Feed::for_folder(folder, self.load()?)?)
    }
}

/// `--preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    /// torchvision's ImageNet evaluation transform (shorter side 256 bilinear, centre crop 224, RGB).
    Imagenet,
    /// OpenAI CLIP's transform (shorter side 224 bicubic, centre crop 224, RGB, CLIP mean/std).
    Clip,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Preset {
        match p {
            PresetArg::Imagenet => Preset::Imagenet,
            PresetArg::Clip => Preset::Clip,
        }
    }
}

/// `--on-bad-image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnBadImageArg {
    /// Stop with an error naming the file.
    Fail,
    /// Leave the file out and count it.
    Skip,
}

impl From<OnBadImageArg> for OnBadImage {
    fn from(a: OnBadImageArg) -> OnBadImage {
        match a {
            OnBadImageArg::Fail => OnBadImage::Fail,
            OnBadImageArg::Skip => OnBadImage::Skip,
        }
    }
}

/// `--tensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TensorsArg {
    /// Inputs of Conv/MatMul/Gemm and the model outputs: enough for the default precision lists, about as
    /// fast as a plain FP32 pass.
    Quantizable,
    /// Every float activation: any precision list works later (e.g. one that quantizes Add or Softmax);
    /// several times slower on transformers.
    All,
}

impl From<TensorsArg> for Selection {
    fn from(a: TensorsArg) -> Selection {
        match a {
            TensorsArg::Quantizable => Selection::Quantizable,
            TensorsArg::All => Selection::All,
        }
    }
}

/// What `calibrate` and `quantize` read: the model, the calibration images, how they are preprocessed and
/// how statistics are collected.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrationSource {
    /// The FP32 ONNX model (external data is read from its folder).
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Folder of calibration images (JPEG/PNG, searched recursively), or of `.npz` samples (one array per
    /// model input, by name; then no recipe).
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Preprocessing.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// How statistics are collected.
    #[command(flatten)]
    pub collect: CollectArgs,
}

/// How calibration collects: the flags `calibrate` and `quantize` share.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// Images per ONNX Runtime call. Does not change the result; memory grows with it (two batches of
    /// activations are alive at once).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Use a seeded random subset of N calibration images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Seed for --limit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for ONNX Runtime and histograms (0 = one per core). Does not change the result.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// What to do with an unreadable image.
    #[arg(long, value_enum, default_value_t = OnBadImageArg::Fail)]
    pub on_bad_image: OnBadImageArg,
    /// Which activations to collect.
    #[arg(long, value_enum, default_value_t = TensorsArg::Quantizable)]
    pub tensors: TensorsArg,
    /// Where the model runs: cpu, or cuda[:N] (ONNX Runtime's CUDA EP with TF32 off; the activations stay in
    /// GPU memory and their statistics are computed there), or several GPUs, cuda:0,1,... or cuda:all (one
    /// session each, batches dealt in turn, statistics merged exactly: the same .hist). Needs onnxruntime-gpu
    /// (`int8kit setup --gpu`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]|cuda:N,M,...|cuda:all")]
    pub device: runtime::Devices,
    /// SmoothQuant smoothing with migration strength ALPHA (0 to 1; the paper's default is 0.5): a first pass
    /// measures max |x| per input channel of every MatMul/Gemm with a constant weight, outlier channels move
    /// into the weights (folded into the LayerNorm before them where there is one, else one Mul), and the
    /// statistics are those of the smoothed model. Twice the calibration time; CPU only.
    #[arg(long, value_name = "ALPHA")]
    pub smooth: Option<f32>,
    /// Only the I-th of N contiguous parts of the sorted image list (after --limit), for N processes or
    /// machines; `int8kit merge` turns the N .hist files into the one-process .hist, byte for byte.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
}

/// `--shard I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}': expected I/N with 1 <= I <= N, such as 2/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

impl CollectArgs {
    /// The library's options.
    pub fn options(&self) -> calibrate::CalibrateOptions {
        calibrate::CalibrateOptions {
            batch_size: self.batch_size,
            threads: self.threads,
            limit: self.limit,
            seed: self.seed,
            on_bad_image: self.on_bad_image.into(),
            selection: self.tensors.into(),
            device: self.device.clone(),
            smooth: self.smooth,
            shard: self.shard,
        }
    }
}

/// `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// TensorRT: also quantize the residual input of Adds after a GEMM/Conv and pooling inputs, so TensorRT
    /// fuses them.
    Tensorrt,
    /// ONNX Runtime: only the pairs its QDQ fusions turn into integer kernels.
    Onnxruntime,
}

/// Where Q/DQ goes: the flags of every command that builds a Q/DQ model.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// The runtime the Q/DQ model is built for.
    #[arg(long, value_enum, default_value_t = TargetArg::Tensorrt)]
    pub target: TargetArg,
    /// Precision of attention MatMuls (both inputs activations: Q*K^T, attn*V); overrides the precision
    /// file's `attention`. Default: int8 for --target tensorrt, float for --target onnxruntime.
    #[arg(long, value_enum)]
    pub attention: Option<AttentionArg>,
    /// Float type of everything that is not INT8 (LayerNorm, Softmax, GELU, denied nodes); inputs and
    /// outputs stay FP32. Default: fp16 for --target tensorrt, fp32 for --target onnxruntime.
    #[arg(long, value_enum)]
    pub float_type: Option<FloatTypeArg>,
}

/// `--attention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionArg {
    /// Both inputs quantized.
    Int8,
    /// Kept in the float type.
    Float,
}

/// `--float-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatTypeArg {
    /// FP32: the graph's own type.
    Fp32,
    /// FP16; numerically fragile ops and overflowing tensors stay FP32.
    Fp16,
}

impl PlacementArgs {
    /// The library's options.
    pub fn options(&self) -> PlacementOptions {
        let target = match self.target {
            TargetArg::Tensorrt => Target::TensorRt,
            TargetArg::Onnxruntime => Target::OnnxRuntime,
        };
        let float_type = match self.float_type {
            None => FloatType::default_for(target),
            Some(FloatTypeArg::Fp32) => FloatType::Fp32,
            Some(FloatTypeArg::Fp16) => FloatType::Fp16,
        };
        let attention = self.attention.map(|a| match a {
            AttentionArg::Int8 => AttentionPrecision::Int8,
            AttentionArg::Float => AttentionPrecision::Float,
        });
        PlacementOptions { target, attention, float_type }
    }
}

/// How scales and precision are chosen: the flags `analyze` and `quantize` share.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// entropy | mse | percentile[:P] (default 99.99) | max | auto (per tensor, from --sensitivity).
    #[arg(long, default_value = "entropy")]
    pub method: String,
    /// With --method auto or --weight-clip auto: a sensitivity.json from `int8kit sensitivity
    /// --choose-methods`.
    #[arg(long, value_name = "S.json")]
    pub sensitivity: Option<PathBuf>,
    /// TOML with [deny] / [allow] tables of node names (globs) and op types.
    #[arg(long, value_name = "P.toml")]
    pub precision: Option<PathBuf>,
    /// TensorRT version written in the calibration cache header.
    #[arg(long, default_value = analyze::DEFAULT_TRT_VERSION)]
    pub trt_version: String,
    /// Where Q/DQ goes.
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// How each weight channel's amax is chosen: max (nothing clipped), mse (the clip with the least
    /// squared int8 error, searched from max |w| down to half of it) or auto (per node, whichever gave the
    /// better output fidelity in --sensitivity S.json; max for nodes it does not list).
    #[arg(long, default_value = "max", value_name = "max|mse|auto")]
    pub weight_clip: String,
}

impl ScaleArgs {
    /// The library's options: the method (or each tensor's, for `auto`) and the precision file.
    pub fn options(&self) -> anyhow::Result<AnalyzeOptions> {
        let (precision, precision_origin) = load_precision(self.precision.as_deref())?;
        let auto_method = self.method == "auto";
        let auto_clip = self.weight_clip == "auto";
        let choices = match (&self.sensitivity, auto_method || auto_clip) {
            (Some(path), true) => evaluate::sensitivity::load_method_choices(path)?,
            (None, true) => anyhow::bail!(
                "--method auto and --weight-clip auto need --sensitivity S.json from `int8kit sensitivity --choose-methods`"
            ),
            (Some(_), false) => anyhow::bail!("--sensitivity goes with --method auto or --weight-clip auto"),
            (None, false) => Default::default(),
        };
        let (method, per_tensor) = if auto_method {
            (Method::Entropy, choices.methods)
        } else {
            (self.method.parse().map_err(anyhow::Error::msg).context("--method")?, Default::default())
        };
        let weight_clip = if auto_clip {
            analyze::qdq::WeightClips { default: analyze::qdq::WeightClip::Max, per_node: choices.weight_clips }
        } else {
            analyze::qdq::WeightClips::all(
                self.weight_clip.parse().map_err(anyhow::Error::msg).context("--weight-clip")?,
            )
        };
        Ok(AnalyzeOptions {
            method,
            precision,
            precision_origin,
            trt_version: self.trt_version.clone(),
            per_tensor,
            placement: self.placement.options(),
            weight_clip,
        })
    }
}

/// Output fidelity limits against FP32 (no labels needed): the gates of `validate` and the fidelity budget
/// of `autoprecision`.
#[derive(Debug, Clone, clap::Args)]
pub struct FidelityArgs {
    /// The INT8 outputs' mean cosine against FP32 must be at least C (-1 to 1).
    #[arg(long, value_name = "C", allow_hyphen_values = true)]
    pub min_cosine: Option<f64>,
    /// The INT8 outputs' SQNR against FP32 must be at least DB.
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    pub min_sqnr: Option<f64>,
    /// The share of images where INT8 and FP32 predict the same class must be at least A (0 to 1).
    #[arg(long, value_name = "A", allow_hyphen_values = true)]
    pub min_agreement: Option<f64>,
}

impl FidelityArgs {
    /// The library's limits.
    pub fn gates(&self) -> evaluate::gates::FidelityGates {
        evaluate::gates::FidelityGates {
            min_cosine: self.min_cosine,
            min_sqnr_db: self.min_sqnr,
            min_agreement: self.min_agreement,
        }
    }
}

/// A precision file and where it came from, or the default lists.
pub fn load_precision(path: Option<&Path>) -> anyhow::Result<(PrecisionFile, String)> {
    Ok(match path {
        Some(p) => (PrecisionFile::load(p)?, p.display().to_string()),
        None => (PrecisionFile::default(), "defaults".into()),
    })
}
