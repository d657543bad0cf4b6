//! Argument groups shared by several subcommands, and the command-line spellings of library enums.

use std::path::{Path, PathBuf};

use analyze::scales::Method;
use datasets::{Feed, OnBadImage, Preset, Recipe};
use histograms::Selection;
use quantizer::placement::{AttentionPrecision, FloatType, PlacementOptions, PrecisionFile, ResidualPrecision, Target};
use quantizer::qdq::{WeightClip, WeightClips};
use quantizer::Scheme;

/// `--recipe R.toml | --preset P`, and `--sizes`: needed for image folders; a folder of `.npz` samples takes
/// none of them.
#[derive(Debug, Clone, clap::Args)]
pub struct RecipeArgs {
    /// Preprocessing recipe for image folders (TOML with an [input] table; see README); none for .npz samples.
    #[arg(long, value_name = "R.toml", conflicts_with = "preset")]
    pub recipe: Option<PathBuf>,
    /// Named preprocessing.
    #[arg(long, value_name = "P")]
    pub preset: Option<PresetArg>,
    /// Input sizes instead of the recipe's (HxW or one number for a square, comma-separated, e.g.
    /// 224,336,448): every size the engine will serve, for a model with dynamic height and width. The
    /// statistics cover every size; validate reports each. A recipe's resize_to scales with the size.
    #[arg(long, value_name = "HxW,...", value_parser = parse_sizes)]
    pub sizes: Option<SizeList>,
}

/// The `[height, width]` list of `--sizes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<[u32; 2]>);

/// `--sizes 224,336x448,...`.
pub fn parse_sizes(s: &str) -> Result<SizeList, String> {
    let side = |v: &str| -> Result<u32, String> {
        match v.trim().parse::<u32>() {
            Ok(n) if (1..=datasets::MAX_SIDE).contains(&n) => Ok(n),
            _ => Err(format!("'{v}': each side is a whole number of pixels from 1 to {}", datasets::MAX_SIDE)),
        }
    };
    let sizes = s
        .split(',')
        .map(|one| match one.split_once(['x', 'X']) {
            Some((h, w)) => Ok([side(h)?, side(w)?]),
            None => side(one).map(|n| [n, n]),
        })
        .collect::<Result<Vec<_>, String>>()?;
    if sizes.len() > datasets::MAX_SIZES {
        return Err(format!("{} sizes; at most {}", sizes.len(), datasets::MAX_SIZES));
    }
    Ok(SizeList(sizes))
}

impl RecipeArgs {
    /// The recipe file's contents, or the preset's, with `--sizes` applied; `None` when neither is given.
    pub fn load(&self) -> anyhow::Result<Option<Recipe>> {
        let recipe = match (&self.recipe, self.preset) {
            (Some(path), _) => Some(Recipe::load(path)?),
            (None, Some(p)) => Some(Recipe::preset(p.into())),
            (None, None) => None,
        };
        Ok(match (recipe, &self.sizes) {
            (Some(r), Some(sizes)) => Some(r.with_sizes(&sizes.0, "--sizes")?),
            (None, Some(_)) => anyhow::bail!(
                "--sizes sets the sizes images are preprocessed to, and no recipe is given: add --recipe or \
                 --preset (.npz samples are fed at the shapes they hold)"
            ),
            (r, None) => r,
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
    /// The ONNX model (FP32, or FP16 storage; external data is read from its folder).
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Folder of calibration images (PNG, JPEG, WebP, BMP, TIFF, GIF; searched recursively), or of `.npz` samples (one array per
    /// model input, by name; then no recipe).
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Preprocessing.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// How samples run through the model.
    #[command(flatten)]
    pub run: RunArgs,
    /// How the calibration pass collects.
    #[command(flatten)]
    pub collect: CollectArgs,
}

/// How samples run through models: the flags of every command that runs one (`calibrate`, `quantize`,
/// `validate`, `sensitivity`, `autoprecision`), defined here once.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Samples per ONNX Runtime call (default 16 in calibration, 64 in validate's evaluation of images up to
    /// 224x224 and proportionally fewer of larger ones, 100 in sensitivity's). With several sizes it counts
    /// images at the smallest; larger sizes take proportionally fewer (at least two). Does not change the
    /// statistics for batches of two or more (ONNX Runtime's kernels for one image may round otherwise);
    /// memory grows with it.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Use a seeded random subset of N samples: of the calibration images (calibrate, quantize, validate), or
    /// of the evaluation images (sensitivity, autoprecision: default 1000).
    #[arg(long, value_name = "N", alias = "limit-calib")]
    pub limit: Option<usize>,
    /// Seed for --limit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads for ONNX Runtime and histograms (0 = one per core). Measurements (the auto search, the
    /// self-check) run in one-thread sessions, as many at once as threads, so that no result depends on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs: cpu, or cuda[:N] (ONNX Runtime's CUDA EP with TF32 off; calibration statistics
    /// are computed in GPU memory), or several GPUs, cuda:0,1,... or cuda:all (one session each, batches or
    /// nodes dealt in turn, results merged exactly). Needs onnxruntime-gpu (`int8kit setup --gpu`).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda[:N]|cuda:N,M,...|cuda:all")]
    pub device: runtime::Devices,
    /// SmoothQuant smoothing before calibration (default auto): a pass over 64 of the samples measures max |x|
    /// per input channel of every MatMul/Gemm with a constant weight, outlier channels move into the weights
    /// (folded into the LayerNorm before them where there is one, else one Mul), and the statistics are those
    /// of the smoothed model. auto: migration strength 0.5 (the paper's default) where the model has attention
    /// (transformer blocks), none elsewhere; ALPHA (0 to 1): that strength wherever a GEMM can be smoothed;
    /// off: none (README, "Smoothing"). Commands that read a .hist take the smoothing it records.
    #[arg(long, value_name = "auto|off|ALPHA", value_parser = parse_smooth)]
    pub smooth: Option<calibrate::Smooth>,
    /// Depthwise Conv inputs equalized before calibration (default on): a pass over 64 of the samples measures
    /// max |x| per input channel, one Mul brings every channel to the largest's range and the Conv's weights
    /// are divided alike, so one INT8 scale serves every channel (README, "Depthwise equalization"). A model
    /// without depthwise Convs is not touched. Commands that read a .hist take the equalization it records.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub equalize: Option<bool>,
    /// Calibration samples held back from the statistics and measured on instead (the self-check, and the
    /// measurements behind every `auto` choice): auto (a tenth of them, 2 to 64; none below 20) or a count
    /// (0: none, and the auto choices fall back to fixed defaults).
    #[arg(long, value_name = "N|auto", value_parser = parse_hold_out)]
    pub hold_out: Option<calibrate::HoldOut>,
}

/// `--equalize on|off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': expected on or off")),
    }
}

/// `--smooth auto|off|ALPHA`.
pub fn parse_smooth(s: &str) -> Result<calibrate::Smooth, String> {
    match s {
        "auto" => Ok(calibrate::Smooth::Auto),
        "off" => Ok(calibrate::Smooth::Off),
        a => match a.parse::<f32>() {
            Ok(alpha) if (0.0..=1.0).contains(&alpha) => Ok(calibrate::Smooth::Alpha(alpha)),
            Ok(_) => Err(format!("'{s}': alpha must be from 0 to 1 (SmoothQuant uses 0.5 for most models)")),
            Err(_) => Err(format!("'{s}': expected auto, off or an alpha from 0 to 1 such as 0.5")),
        },
    }
}

/// `--hold-out N|auto`.
pub fn parse_hold_out(s: &str) -> Result<calibrate::HoldOut, String> {
    match s {
        "auto" => Ok(calibrate::HoldOut::Auto),
        n => {
            n.parse().map(calibrate::HoldOut::Count).map_err(|_| format!("'{s}': expected auto or a count such as 64"))
        }
    }
}

impl RunArgs {
    /// Refuses the flags that act only when samples are calibrated here, for a command that reads its
    /// statistics from a .hist (`what`: the flag that gives it): they would have nothing to act on.
    pub fn refuse_calibration_flags(&self, what: &str) -> anyhow::Result<()> {
        if let Some(smooth) = self.smooth {
            anyhow::bail!(
                "--smooth {} applies when calibrating; {what} already holds its statistics and records the \
                 smoothing they were made with: calibrate with --smooth instead",
                smooth.name()
            );
        }
        if self.equalize.is_some() {
            anyhow::bail!(
                "--equalize applies when calibrating; {what} already records the equalization its statistics were \
                 made with: calibrate with --equalize instead"
            );
        }
        if self.hold_out.is_some() {
            anyhow::bail!(
                "--hold-out applies when calibrating; {what} already records which samples its calibration held \
                 back: calibrate with --hold-out instead"
            );
        }
        Ok(())
    }
}

/// How the calibration pass collects: the flags only `calibrate` and `quantize` have.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// What to do with an unreadable image.
    #[arg(long, value_enum, default_value_t = OnBadImageArg::Fail)]
    pub on_bad_image: OnBadImageArg,
    /// Which activations to collect.
    #[arg(long, value_enum, default_value_t = TensorsArg::Quantizable)]
    pub tensors: TensorsArg,
    /// Only the I-th of N contiguous parts of the sorted image list (after --limit), for N processes or
    /// machines; `int8kit merge` turns the N .hist files into the one-process .hist, byte for byte.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// With several sizes (recipe `sizes`, or --sizes): each image goes through the model at one size, dealt
    /// over the sizes (seeded by --seed), instead of at every size: a pass's time instead of one per size.
    #[arg(long)]
    pub deal_sizes: bool,
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

impl CalibrationSource {
    /// The calibration library's options.
    pub fn options(&self) -> calibrate::CalibrateOptions {
        calibrate::CalibrateOptions {
            on_bad_image: self.collect.on_bad_image.into(),
            selection: self.collect.tensors.into(),
            shard: self.collect.shard,
            deal_sizes: self.collect.deal_sizes,
            ..self.run.calibrate_options()
        }
    }
}

impl RunArgs {
    /// Calibration options from these flags (the defaults for the rest).
    pub fn calibrate_options(&self) -> calibrate::CalibrateOptions {
        let defaults = calibrate::CalibrateOptions::default();
        calibrate::CalibrateOptions {
            batch_size: self.batch_size.unwrap_or(defaults.batch_size),
            threads: self.threads,
            limit: self.limit,
            seed: self.seed,
            device: self.device.clone(),
            smooth: self.smooth.unwrap_or_default(),
            equalize: self.equalize.unwrap_or(defaults.equalize),
            hold_out: self.hold_out.unwrap_or_default(),
            ..defaults
        }
    }
}

/// `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// TensorRT: also quantize the residual input of Adds after a GEMM/Conv and pooling inputs, so TensorRT
    /// fuses them; GEMMs and Convs too narrow for its INT8 kernels (K or N, or channels, below 16) stay float.
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
    /// file's `attention`. Default: for --target tensorrt chosen by measurement (int8 where nothing is
    /// measured), float for --target onnxruntime. On a model without attention MatMuls (ONNX Attention nodes
    /// stay float) a warning says it changes nothing.
    #[arg(long, value_enum)]
    pub attention: Option<AttentionArg>,
    /// Float type of everything that is not INT8 (LayerNorm, Softmax, GELU, denied nodes); inputs and
    /// outputs stay FP32. Default: for --target tensorrt chosen by measurement (fp16 where nothing is
    /// measured; a model stored in FP16 stays FP16), fp32 for --target onnxruntime; fp32, said, where FP16
    /// Q/DQ cannot be built (below opset 19 with If/Loop/Scan subgraphs, where fp16 is refused).
    #[arg(long, value_enum)]
    pub float_type: Option<FloatTypeArg>,
    /// The residual input of Adds after an INT8 GEMM/Conv: int8 (the default) lets the Add fuse into the
    /// GEMM/Conv, float keeps the residual stream unrounded there (the Add runs on its own), auto measures
    /// both (--target tensorrt; int8 where nothing is measured).
    #[arg(long, value_enum)]
    pub residual: Option<ResidualArg>,
}

/// `--residual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResidualArg {
    /// Quantized, so the Add fuses into the GEMM/Conv before it.
    Int8,
    /// Kept in the float type.
    Float,
    /// Chosen by measurement on the held-back samples, with the other auto choices.
    Auto,
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
        let residual = match self.residual {
            Some(ResidualArg::Float) => ResidualPrecision::Float,
            None | Some(ResidualArg::Int8 | ResidualArg::Auto) => ResidualPrecision::Int8,
        };
        PlacementOptions { target, attention, float_type, residual }
    }
}

/// The quantization scheme: the flags of every command that builds an INT8 model (`quantize`, `analyze`,
/// `validate`, `sensitivity`, `autoprecision`), defined here once and converted once ([`SchemeArgs::scheme`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SchemeArgs {
    /// Scale method of the activations: entropy | mse | percentile[:P] (default 99.99) | max | auto. auto
    /// (the default) builds a candidate per method and keeps the one whose outputs are closest to the float
    /// model's on the held-back calibration samples (README, "Choices by measurement"); with --sensitivity,
    /// each tensor's method from that file instead.
    #[arg(long, default_value = "auto", value_name = "METHOD")]
    pub method: OrAuto<Method>,
    /// A sensitivity.json from `int8kit sensitivity --choose-methods`: the per-tensor methods of --method auto
    /// and the per-node clips of --weight-clip auto (validate also charts its ranking in report.html).
    #[arg(long, value_name = "S.json")]
    pub sensitivity: Option<PathBuf>,
    /// TOML with [deny] / [allow] tables of node names (globs) and op types.
    #[arg(long, value_name = "P.toml")]
    pub precision: Option<PathBuf>,
    /// TensorRT version written in the calibration cache header.
    #[arg(long, default_value = quantizer::DEFAULT_TRT_VERSION)]
    pub trt_version: String,
    /// Where Q/DQ goes.
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// How each weight channel's amax is chosen: max (nothing clipped), mse (the clip with the least
    /// squared int8 error, searched from max |w| down to half of it) or auto (per node, whichever gave the
    /// better output fidelity in --sensitivity S.json; max for nodes it does not list).
    #[arg(long, default_value = "max", value_name = "max|mse|auto")]
    pub weight_clip: OrAuto<WeightClip>,
}

/// `--method` and `--weight-clip`: one choice for every tensor or node, or `auto` (each its own, from a
/// sensitivity.json).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OrAuto<T> {
    /// One choice for all.
    One(T),
    /// Per tensor or node, from a sensitivity.json.
    Auto,
}

impl<T: std::str::FromStr<Err = String>> std::str::FromStr for OrAuto<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<OrAuto<T>, String> {
        match s {
            "auto" => Ok(OrAuto::Auto),
            other => Ok(OrAuto::One(other.parse()?)),
        }
    }
}

impl SchemeArgs {
    /// The library's scheme: the method (or each tensor's, for `auto`), the weight clips (or each node's),
    /// the precision file, the placement and the TensorRT version. `--sensitivity` is refused without an
    /// `auto` to feed unless the command also uses it otherwise (`ranking_shown`: validate's report).
    pub fn scheme(&self, ranking_shown: bool) -> anyhow::Result<Scheme> {
        let (precision, precision_origin) = load_precision(self.precision.as_deref())?;
        let auto_method = self.method == OrAuto::Auto;
        let auto_clip = self.weight_clip == OrAuto::Auto;
        // Per-tensor choices from a sensitivity.json replace the search; validate also takes a ranking alone
        // (for its chart), and then searches.
        let mut from_file = self.sensitivity.is_some() && (auto_method || auto_clip);
        let choices = match (&self.sensitivity, auto_method || auto_clip) {
            (Some(path), true) if ranking_shown && !auto_clip => {
                let choices = evaluate::sensitivity::load_method_choices_if_any(path)?;
                from_file = choices.is_some();
                choices.unwrap_or_default()
            }
            (Some(path), true) => evaluate::sensitivity::load_method_choices(path)?,
            (None, true) if auto_clip => anyhow::bail!(
                "--weight-clip auto needs --sensitivity S.json from `int8kit sensitivity --choose-methods`"
            ),
            (None, true) => Default::default(),
            (Some(_), false) if !ranking_shown => {
                anyhow::bail!("--sensitivity goes with --method auto (its default) or --weight-clip auto")
            }
            (_, false) => Default::default(),
        };
        let (method, per_tensor) = match self.method {
            OrAuto::Auto => (Method::Entropy, choices.methods),
            OrAuto::One(m) => (m, Default::default()),
        };
        let weight_clip = match self.weight_clip {
            OrAuto::Auto => WeightClips { default: WeightClip::Max, per_node: choices.weight_clips },
            OrAuto::One(clip) => WeightClips::all(clip),
        };
        quantizer::cache::trt_version_code(&self.trt_version)?;
        let placement = self.placement.options();
        let tensorrt = placement.target == Target::TensorRt;
        let auto = quantizer::search::AutoChoices {
            method: auto_method && !from_file,
            // Only for TensorRT: for ONNX Runtime's CPU kernels, float attention and FP32 are the fast choices,
            // and the measurement weighs accuracy alone.
            attention: tensorrt && self.placement.attention.is_none() && precision.attention.is_none(),
            float_type: tensorrt && self.placement.float_type.is_none(),
            // Asked for only (`--residual auto`): on the zoo's opennsfw ResNet-50 the held-back samples chose a
            // float residual stream with another method, 3.2 dB worse on other photos (BENCHMARKS.md).
            residual: tensorrt && self.placement.residual == Some(ResidualArg::Auto),
        };
        Ok(Scheme {
            method,
            per_tensor,
            weight_clip,
            precision,
            precision_origin,
            placement,
            trt_version: self.trt_version.clone(),
            auto,
        })
    }
}

/// `--check DIR`: samples to measure on when the statistics come from a `.hist` whose held-back samples are
/// not at hand (the Python API's iterables hold theirs back into such a folder), or, in `quantize`, samples
/// more like what the model will serve than the calibration's own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Samples to measure on, instead of the calibration's held-back ones: the self-check and the `auto`
    /// choices. A folder of `.npz` samples (fed by input name) or of images (through the calibration's recipe);
    /// they must be samples the statistics did not see.
    #[arg(long, value_name = "DIR")]
    pub check: Option<PathBuf>,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The long flags a group defines.
    fn flags_of<A: clap::Args>() -> Vec<String> {
        A::augment_args(clap::Command::new("group"))
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect()
    }

    /// Every command that builds a model takes the whole scheme group, every command that runs one the whole
    /// run group: read from each command's `--help`, so a command that lacks a flag of its group fails here.
    #[test]
    fn every_command_that_builds_or_runs_a_model_has_every_flag_of_its_groups() {
        let (scheme, run) = (flags_of::<SchemeArgs>(), flags_of::<RunArgs>());
        assert!(scheme.contains(&"--method".into()) && scheme.contains(&"--float-type".into()), "{scheme:?}");
        assert!(run.contains(&"--batch-size".into()) && run.contains(&"--smooth".into()), "{run:?}");
        let groups: [(&str, &[&Vec<String>]); 6] = [
            ("quantize", &[&scheme, &run]),
            ("analyze", &[&scheme]),
            ("validate", &[&scheme, &run]),
            ("sensitivity", &[&scheme, &run]),
            ("autoprecision", &[&scheme, &run]),
            ("calibrate", &[&run]),
        ];
        let mut cli = crate::Cli::command();
        let names: Vec<String> = cli.get_subcommands().map(|c| c.get_name().to_string()).collect();
        for name in &names {
            // Only these neither build nor run a model.
            let listed = groups.iter().any(|(g, _)| g == name) || ["merge", "lint", "setup"].contains(&name.as_str());
            assert!(listed, "subcommand {name} is not checked here: give it its groups");
        }
        for (name, wanted) in groups {
            let help = cli.find_subcommand_mut(name).unwrap().render_long_help().to_string();
            let tokens: Vec<&str> = help.split_whitespace().map(|t| t.trim_end_matches(',')).collect();
            for flag in wanted.iter().flat_map(|g| g.iter()) {
                assert!(tokens.contains(&flag.as_str()), "`int8kit {name} --help` lacks {flag}:\n{help}");
            }
        }
    }

    #[test]
    fn method_and_weight_clip_take_auto_or_one_choice() {
        assert_eq!("auto".parse::<OrAuto<Method>>().unwrap(), OrAuto::Auto);
        assert_eq!("mse".parse::<OrAuto<Method>>().unwrap(), OrAuto::One(Method::Mse));
        assert!("kl".parse::<OrAuto<Method>>().unwrap_err().contains("entropy, mse"));
        assert_eq!("auto".parse::<OrAuto<WeightClip>>().unwrap(), OrAuto::Auto);
        assert_eq!("mse".parse::<OrAuto<WeightClip>>().unwrap(), OrAuto::One(WeightClip::Mse));
    }
}

/// `--weight-rounding`, for the commands that build a model from the calibration samples at hand (`quantize`,
/// `analyze` given the calibration folder, and `validate --calib`).
#[derive(Debug, Clone, clap::Args)]
pub struct RoundingArgs {
    /// How INT8 weights are rounded: auto (the Convs' weights by GPTQ, rounded so that each layer's output
    /// stays close given how its inputs correlate over up to 128 of the calibration samples, written where the
    /// held-back samples measure it more than 0.25 dB better than rounding to nearest; nearest without held-back
    /// samples), nearest, or gptq (every Conv, Gemm and MatMul, always). The scales are the same either way
    /// (README, "Weight rounding")
    #[arg(long, default_value = "auto", value_name = "auto|nearest|gptq")]
    pub weight_rounding: quantizer::rounding::WeightRounding,
}
