//! The preprocessing recipe: a TOML file with an `[input]` table, or a named preset.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DatasetError;

/// The largest image side a recipe may ask for (sizes and `resize_to`): 16384 pixels, already 1 GiB of float
/// pixels per RGB image, so that a typo cannot ask for a 120 GB buffer.
pub const MAX_SIDE: u32 = 16384;
/// The most sizes a recipe may list: each is a pass over the calibration images.
pub const MAX_SIZES: usize = 16;

/// Tensor layout fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// [N, C, H, W].
    #[serde(rename = "NCHW")]
    Nchw,
    /// [N, H, W, C].
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Colour model fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// One luminance channel (PIL's `convert("L")`).
    Gray,
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
}

impl Channels {
    /// Number of channels.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb | Channels::Bgr => 3,
        }
    }
}

/// How an image is brought to `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Resize the shorter side to `resize_to` (aspect kept, as torchvision's `Resize(int)`), then centre-crop.
    Shorter,
    /// Resize straight to `size`.
    Exact,
    /// No resize; centre-crop to `size` (the image must be at least that large).
    None,
}

/// Resampling filter (PIL's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (PIL's BILINEAR).
    Bilinear,
    /// Bicubic (PIL's BICUBIC, Catmull-Rom).
    Bicubic,
}

/// How an image becomes a model input. Serialized as the `[input]` table of a recipe file, where the size is
/// either `size = [H, W]` or, for models with dynamic height and width, `sizes = [[H, W], ...]` (every size the
/// engine will serve; the two keys exclude each other).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecipeTable", into = "RecipeTable")]
pub struct Recipe {
    /// The model input to feed; `None` means the model's only input.
    pub name: Option<String>,
    /// Layout of the tensor.
    pub layout: Layout,
    /// Colour model.
    pub channels: Channels,
    /// `[height, width]` of the tensor this recipe makes: the only size, or the first of [`Recipe::sizes`].
    pub size: [u32; 2],
    /// Every `[height, width]` listed with `sizes` (the first is `size`); empty for a one-size recipe. A
    /// recipe of several sizes makes images at one of them through [`Recipe::at`].
    pub sizes: Vec<[u32; 2]>,
    /// How the image is brought to `size`.
    pub resize: ResizeMode,
    /// Target of the shorter side for `resize = "shorter"`, for the first size; the others scale it with
    /// their shorter side ([`Recipe::at`]).
    pub resize_to: Option<u32>,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Pixels are divided by this first (255 maps 8-bit images to [0, 1]).
    pub scale: f32,
    /// Per-channel mean, after `scale` (none with `dtype = "uint8"`).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (none with `dtype = "uint8"`).
    pub std: Vec<f32>,
    /// What the model takes: float32 (scaled and normalised here) or uint8 (the decoded pixel levels, for
    /// models that normalise inside the graph, as TF exports and many deployed embedders do).
    pub dtype: InputType,
}

/// The `[input]` table as written: [`Recipe`] with `size` and `sizes` as the keys they are in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default = "default_layout")]
    layout: Layout,
    channels: Channels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<[u32; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sizes: Option<Vec<[u32; 2]>>,
    #[serde(default = "default_resize")]
    resize: ResizeMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resize_to: Option<u32>,
    #[serde(default = "default_interpolation")]
    interpolation: Interpolation,
    #[serde(default = "default_scale")]
    scale: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mean: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    std: Vec<f32>,
    #[serde(default, skip_serializing_if = "InputType::is_float32")]
    dtype: InputType,
}

impl TryFrom<RecipeTable> for Recipe {
    type Error = String;
    fn try_from(t: RecipeTable) -> Result<Recipe, String> {
        let (size, sizes) = match (t.size, t.sizes) {
            (Some(size), None) => (size, Vec::new()),
            (None, Some(sizes)) => match sizes.as_slice() {
                [] => return Err("sizes = []: list at least one [height, width]".into()),
                // One listed size is the plain `size`: a recipe has one form per meaning.
                [one] => (*one, Vec::new()),
                [first, ..] => (*first, sizes),
            },
            (Some(_), Some(_)) => {
                return Err("give either size = [H, W] or sizes = [[H, W], ...], not both".into());
            }
            (None, None) => {
                return Err("missing field `size` (or `sizes` for several input sizes)".into());
            }
        };
        Ok(Recipe {
            name: t.name,
            layout: t.layout,
            channels: t.channels,
            size,
            sizes,
            resize: t.resize,
            resize_to: t.resize_to,
            interpolation: t.interpolation,
            scale: t.scale,
            mean: t.mean,
            std: t.std,
            dtype: t.dtype,
        })
    }
}

impl From<Recipe> for RecipeTable {
    fn from(r: Recipe) -> RecipeTable {
        let several = r.sizes.len() > 1;
        RecipeTable {
            name: r.name,
            layout: r.layout,
            channels: r.channels,
            size: (!several).then_some(r.size),
            sizes: several.then_some(r.sizes),
            resize: r.resize,
            resize_to: r.resize_to,
            interpolation: r.interpolation,
            scale: r.scale,
            mean: r.mean,
            std: r.std,
            dtype: r.dtype,
        }
    }
}

/// The element type of the image tensor a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Scaled and normalised float32 values.
    #[default]
    Float32,
    /// The pixel levels 0..=255 as they are.
    Uint8,
}

impl InputType {
    /// Whether this is the default float32.
    pub fn is_float32(&self) -> bool {
        *self == InputType::Float32
    }
}

fn default_layout() -> Layout {
    Layout::Nchw
}
fn default_resize() -> ResizeMode {
    ResizeMode::Shorter
}
fn default_interpolation() -> Interpolation {
    Interpolation::Bilinear
}
fn default_scale() -> f32 {
    255.0
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    input: Recipe,
}

/// Named recipes for common model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// torchvision's ImageNet evaluation transform: shorter side 256 bilinear, centre crop 224, RGB.
    Imagenet,
    /// OpenAI CLIP's transform: shorter side 224 bicubic, centre crop 224, RGB, CLIP mean/std.
    Clip,
}

impl Recipe {
    /// The named preset's recipe.
    pub fn preset(preset: Preset) -> Recipe {
        match preset {
            Preset::Imagenet => Recipe {
                name: None,
                layout: Layout::Nchw,
                channels: Channels::Rgb,
                size: [224, 224],
                sizes: Vec::new(),
                resize: ResizeMode::Shorter,
                resize_to: Some(256),
                interpolation: Interpolation::Bilinear,
                scale: 255.0,
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
                dtype: InputType::Float32,
            },
            Preset::Clip => Recipe {
                name: None,
                layout: Layout::Nchw,
                channels: Channels::Rgb,
                size: [224, 224],
                sizes: Vec::new(),
                resize: ResizeMode::Shorter,
                resize_to: Some(224),
                interpolation: Interpolation::Bicubic,
                scale: 255.0,
                mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
                std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
                dtype: InputType::Float32,
            },
        }
    }

    /// Parses a recipe file's text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Recipe, DatasetError> {
        let bad = |message: String| DatasetError::Recipe { origin: origin.into(), message };
        let file: RecipeFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.input.dtype == InputType::Uint8 {
            // The keys are refused rather than ignored: a scale or normalisation the user wrote would otherwise
            // silently not be applied.
            let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
            let input = table.get("input").and_then(toml::Value::as_table);
            if let Some(key) = ["scale", "mean", "std"].into_iter().find(|k| input.is_some_and(|t| t.contains_key(*k)))
            {
                return Err(bad(format!(
                    "dtype = \"uint8\" feeds the pixel levels as they are, so '{key}' cannot apply: remove it (the \
                     model normalises inside its graph), or use dtype = \"float32\""
                )));
            }
        }
        file.input.validate(origin)?;
        Ok(file.input)
    }

    /// Reads and checks a recipe TOML file.
    pub fn load(path: &Path) -> Result<Recipe, DatasetError> {
        let text = safe_io::read_to_string(path, safe_io::limits::TEXT, "a recipe")?;
        Recipe::from_toml(&text, &path.display().to_string())
    }

    /// The recipe as TOML (what [`Recipe::load`] reads).
    pub fn to_toml(&self) -> String {
        toml::to_string(&RecipeFile { input: self.clone() }).unwrap_or_default()
    }

    /// Checks the recipe's values; `origin` names it in errors.
    pub fn validate(&self, origin: &str) -> Result<(), DatasetError> {
        let bad = |message: String| Err(DatasetError::Recipe { origin: origin.into(), message });
        let c = self.channels.count();
        if self.dtype == InputType::Uint8 {
            if !self.mean.is_empty() || !self.std.is_empty() {
                return bad("dtype = \"uint8\" takes no mean or std".into());
            }
        } else if self.mean.len() != c || self.std.len() != c {
            return bad(format!(
                "channels = {:?} needs {c} mean and {c} std values, found {} and {}",
                self.channels,
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(i) = self.std.iter().position(|s| !s.is_finite() || *s == 0.0) {
            return bad(format!("std[{i}] = {} must be finite and non-zero", self.std[i]));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean values must be finite".into());
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return bad(format!("scale = {} must be finite and non-zero", self.scale));
        }
        if self.size.iter().any(|&s| s == 0 || s > MAX_SIDE) {
            return bad(format!("size = {:?}: each side must be from 1 to {MAX_SIDE} pixels", self.size));
        }
        if let Some(s) = self.sizes.iter().find(|s| s.iter().any(|&side| side == 0 || side > MAX_SIDE)) {
            return bad(format!("sizes: {s:?}: each side must be from 1 to {MAX_SIDE} pixels"));
        }
        if !self.sizes.is_empty() && self.sizes[0] != self.size {
            return bad(format!("size {:?} is not the first of sizes {:?}", self.size, self.sizes));
        }
        if let Some(s) = self.sizes.iter().enumerate().find(|(i, s)| self.sizes[..*i].contains(s)).map(|(_, s)| s) {
            return bad(format!("sizes lists {s:?} twice"));
        }
        if self.sizes.len() > MAX_SIZES {
            return bad(format!("sizes lists {} sizes; at most {MAX_SIZES}", self.sizes.len()));
        }
        if let Some(r) = self.resize_to.filter(|&r| r == 0 || r > MAX_SIDE) {
            return bad(format!("resize_to = {r}: must be from 1 to {MAX_SIDE} pixels"));
        }
        for size in self.sizes.iter().skip(1) {
            let at = self.at(*size);
            if let Some(r) = at.resize_to.filter(|&r| r > MAX_SIDE) {
                return bad(format!("resize_to scales to {r} at size {size:?}: must be at most {MAX_SIDE} pixels"));
            }
        }
        if self.resize == ResizeMode::Shorter {
            match self.resize_to {
                None => return bad("resize = \"shorter\" needs resize_to (the shorter side's new length)".into()),
                Some(r) if r < self.size[0].min(self.size[1]) => {
                    return bad(format!("resize_to = {r} is smaller than size {:?}: the crop would not fit", self.size))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every size the recipe makes images at: `sizes`, or `[size]`.
    pub fn all_sizes(&self) -> Vec<[u32; 2]> {
        if self.sizes.is_empty() {
            vec![self.size]
        } else {
            self.sizes.clone()
        }
    }

    /// Whether the recipe lists several sizes.
    pub fn is_multi_size(&self) -> bool {
        self.sizes.len() > 1
    }

    /// The one-size recipe that makes images at `size`: with `resize = "shorter"`, `resize_to` scales with
    /// the shorter side (256 for 224 makes 512 for 448), so every size sees the same share of the image.
    pub fn at(&self, size: [u32; 2]) -> Recipe {
        let base = self.size[0].min(self.size[1]).max(1) as u64;
        let resize_to = self.resize_to.map(|r| {
            let scaled = (r as u64 * size[0].min(size[1]) as u64 + base / 2) / base;
            scaled.min(u32::MAX as u64) as u32
        });
        Recipe { size, sizes: Vec::new(), resize_to, ..self.clone() }
    }

    /// Images per batch at `size` when `batch_size` counts images at the recipe's smallest size: a larger size
    /// takes proportionally fewer, so one batch holds no more pixels, and ONNX Runtime no more memory, than a
    /// batch of the smallest size (a 960x960 batch of 16 is 9x a 320x320 one). Never fewer than two unless
    /// `batch_size` is one: ONNX Runtime's CPU kernels for a batch of one (GEMV instead of GEMM, another
    /// reduction path) round the last bits otherwise, and batches of two or more give the same statistics
    /// whatever their size (tested), so this changes only memory and speed.
    pub fn batch_at(&self, batch_size: usize, size: [u32; 2]) -> usize {
        let scaled = batch_size as u64 * self.smallest_pixels() / pixels(size).max(1);
        let batch_size = batch_size.max(1);
        (scaled as usize).clamp(batch_size.min(2), batch_size)
    }

    /// Pixels of an image at the recipe's smallest size.
    pub fn smallest_pixels(&self) -> u64 {
        self.all_sizes().into_iter().map(pixels).min().unwrap_or(1)
    }

    /// [`Recipe::each_size`], each with its images per batch ([`Recipe::batch_at`]).
    pub fn each_size_batched(&self, batch_size: usize) -> Vec<(Recipe, usize)> {
        self.each_size().into_iter().map(|one| (one.clone(), self.batch_at(batch_size, one.size))).collect()
    }

    /// The one-size recipe of each listed size, in order (the recipe itself when it has one size).
    pub fn each_size(&self) -> Vec<Recipe> {
        self.all_sizes().into_iter().map(|s| self.at(s)).collect()
    }

    /// The recipe with `sizes` instead of its own size(s) (`--sizes`); `origin` names the flag in errors.
    pub fn with_sizes(&self, sizes: &[[u32; 2]], origin: &str) -> Result<Recipe, DatasetError> {
        let Some(&first) = sizes.first() else {
            return Err(DatasetError::Recipe { origin: origin.into(), message: "no size given".into() });
        };
        // resize_to keeps its ratio to the recipe's own first size.
        let mut r = self.at(first);
        r.sizes = if sizes.len() > 1 { sizes.to_vec() } else { Vec::new() };
        r.validate(origin)?;
        Ok(r)
    }

    /// Shape of a batch of `n` images: `[n, C, H, W]` or `[n, H, W, C]`.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        let (h, w, c) = (self.size[0] as usize, self.size[1] as usize, self.channels.count());
        match self.layout {
            Layout::Nchw => [n, c, h, w],
            Layout::Nhwc => [n, h, w, c],
        }
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.size[0] as usize * self.size[1] as usize * self.channels.count()
    }
}

/// Pixels of an image of `size`.
fn pixels(size: [u32; 2]) -> u64 {
    size[0] as u64 * size[1] as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let r = Recipe::from_toml(
            r#"
            [input]
            name = "input"
            layout = "NCHW"
            channels = "gray"
            size = [28, 28]
            resize = "shorter"
            resize_to = 28
            interpolation = "bilinear"
            scale = 255.0
            mean = [0.2860]
            std = [0.3530]
            "#,
            "example",
        )
        .unwrap();
        assert_eq!(r.channels, Channels::Gray);
        assert_eq!(r.batch_shape(4), [4, 1, 28, 28]);
        assert_eq!(Recipe::from_toml(&r.to_toml(), "roundtrip").unwrap(), r);
    }

    #[test]
    fn larger_sizes_take_fewer_images_per_batch_so_a_batch_holds_no_more_pixels() {
        let r = Recipe::from_toml(
            "[input]\nchannels = \"rgb\"\nsizes = [[640, 640], [320, 320], [960, 960], [320, 400]]\n\
             resize = \"exact\"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]",
            "sizes",
        )
        .unwrap();
        // Counted at the smallest size (320x320), whatever the order.
        assert_eq!(r.batch_at(16, [320, 320]), 16);
        assert_eq!(r.batch_at(16, [640, 640]), 4);
        assert_eq!(r.batch_at(64, [960, 960]), 7);
        assert_eq!(r.batch_at(16, [320, 400]), 12);
        assert_eq!(r.batch_at(16, [960, 960]), 2, "never below two images");
        assert_eq!(r.batch_at(1, [960, 960]), 1, "unless one was asked for");
        for size in r.all_sizes() {
            assert!(r.batch_at(64, size) as u64 * size[0] as u64 * size[1] as u64 <= 64 * 320 * 320);
        }
        // One size: the batch size as given.
        assert_eq!(r.at([960, 960]).batch_at(16, [960, 960]), 16);
    }

    #[test]
    fn rejects_inconsistent_recipes_with_the_reason() {
        let cases = [
            (
                "[input]\nchannels = \"rgb\"\nsize = [4, 4]\nresize = \"exact\"\nmean = [0.5]\nstd = [0.5]",
                "needs 3 mean",
            ),
            ("[input]\nchannels = \"gray\"\nsize = [4, 4]\nresize = \"exact\"\nmean = [0.5]\nstd = [0.0]", "std[0]"),
            ("[input]\nchannels = \"gray\"\nsize = [4, 4]\nmean = [0.5]\nstd = [0.5]", "needs resize_to"),
            ("[input]\nchannels = \"grey\"\nsize = [4, 4]\nmean = [0.5]\nstd = [0.5]", "unknown variant"),
            ("[input]\nchannels = \"gray\"\nsize = [4, 4]\nmean = [0.5]\nstd = [0.5]\nresize_too = 3", "unknown field"),
            // Sizes that would ask for a 120 GB buffer.
            (
                "[input]\nchannels = \"gray\"\nsize = [4, 4]\nresize = \"shorter\"\nresize_to = 4294967295\nmean = [0.5]\nstd = [0.5]",
                "resize_to = 4294967295: must be from 1 to 16384",
            ),
            ("[input]\nchannels = \"gray\"\nsize = [100000, 4]\nresize = \"exact\"\nmean = [0.5]\nstd = [0.5]", "from 1 to 16384"),
        ];
        for (text, want) in cases {
            let err = Recipe::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("t.toml"), "{err}");
        }
    }
}
