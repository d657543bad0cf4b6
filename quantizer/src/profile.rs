//! The TensorRT optimisation profile of a Q/DQ model calibrated over several input sizes (`profile.json`,
//! FORMATS.md): the smallest, most common and largest input shape the engine must serve, for trtexec's
//! `--minShapes/--optShapes/--maxShapes` or a builder's `add_optimization_profile`.

use datasets::{Layout, Recipe};
use serde::{Deserialize, Serialize};

use crate::QuantizeError;

/// The `format` value of profile.json.
pub const PROFILE_FORMAT: &str = "int8kit.profile";
/// The profile.json version; bump on any incompatible change.
pub const PROFILE_VERSION: u32 = 1;
/// The largest batch of a dynamic batch axis: what `validate` evaluates with (`evaluate`'s default batch).
pub const PROFILE_MAX_BATCH: usize = 64;

/// `profile.json`: one input's shapes, batch first, in the recipe's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineProfile {
    /// Always [`PROFILE_FORMAT`].
    pub format: String,
    /// [`PROFILE_VERSION`].
    pub version: u32,
    /// The image input.
    pub input: String,
    /// Smallest shape: batch 1 (or the fixed batch), each spatial side's smallest listed value.
    pub min: Vec<usize>,
    /// The shape to tune for: the largest batch at the size most images were calibrated at (the first listed
    /// on ties).
    pub opt: Vec<usize>,
    /// Largest shape: the largest batch, each spatial side's largest listed value.
    pub max: Vec<usize>,
    /// The `[H, W]` sizes the statistics cover, in the recipe's order.
    pub sizes: Vec<[u32; 2]>,
}

impl EngineProfile {
    /// The profile of `input` for the recipe's sizes, `counts` images calibrated at each (same order; empty
    /// or all equal: the first size is `opt`). A fixed batch stays fixed; a dynamic one spans 1 to
    /// `max_batch`.
    pub fn derive(
        input: &str,
        fixed_batch: Option<usize>,
        recipe: &Recipe,
        counts: &[u64],
        max_batch: usize,
    ) -> EngineProfile {
        let sizes = recipe.all_sizes();
        let side = |pick: fn(u32, u32) -> u32, axis: usize| sizes.iter().map(|s| s[axis]).reduce(pick).unwrap_or(0);
        let smallest = [side(u32::min, 0), side(u32::min, 1)];
        let largest = [side(u32::max, 0), side(u32::max, 1)];
        // The most common size, the first listed on ties.
        let common = (0..sizes.len()).fold(0, |best, k| {
            if counts.get(k).copied().unwrap_or(0) > counts.get(best).copied().unwrap_or(0) {
                k
            } else {
                best
            }
        });
        let opt_size = sizes.get(common).copied().unwrap_or(recipe.size);
        let (small, large) = match fixed_batch {
            Some(b) => (b, b),
            None => (1, max_batch.max(1)),
        };
        let shape = |batch: usize, [h, w]: [u32; 2]| -> Vec<usize> {
            let (c, h, w) = (recipe.channels.count(), h as usize, w as usize);
            match recipe.layout {
                Layout::Nchw => vec![batch, c, h, w],
                Layout::Nhwc => vec![batch, h, w, c],
            }
        };
        EngineProfile {
            format: PROFILE_FORMAT.into(),
            version: PROFILE_VERSION,
            input: input.into(),
            min: shape(small, smallest),
            opt: shape(large, opt_size),
            max: shape(large, largest),
            sizes,
        }
    }

    /// trtexec's `--minShapes`, `--optShapes` and `--maxShapes` arguments.
    pub fn trtexec_args(&self) -> Vec<String> {
        let dims = |s: &[usize]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        [("minShapes", &self.min), ("optShapes", &self.opt), ("maxShapes", &self.max)]
            .into_iter()
            .map(|(flag, shape)| format!("--{flag}='{}':{}", self.input, dims(shape)))
            .collect()
    }

    /// profile.json's bytes: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, QuantizeError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| QuantizeError::Json { file: "profile.json", source })?;
        json.push(b'\n');
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(sizes: &[[u32; 2]]) -> Recipe {
        Recipe::preset(datasets::Preset::Imagenet).with_sizes(sizes, "t").unwrap()
    }

    #[test]
    fn min_and_max_take_each_side_apart_and_opt_the_most_common_size() {
        let r = recipe(&[[224, 224], [448, 336], [336, 448]]);
        let p = EngineProfile::derive("pixel_values", None, &r, &[10, 30, 30], 64);
        assert_eq!(
            (p.min.clone(), p.opt.clone(), p.max.clone()),
            (vec![1, 3, 224, 224], vec![64, 3, 448, 336], vec![64, 3, 448, 448])
        );
        assert_eq!(
            p.trtexec_args(),
            [
                "--minShapes='pixel_values':1x3x224x224",
                "--optShapes='pixel_values':64x3x448x336",
                "--maxShapes='pixel_values':64x3x448x448"
            ]
        );
        // Equal counts (every image at every size): the first listed size.
        let even = EngineProfile::derive("x", Some(8), &r, &[5, 5, 5], 64);
        assert_eq!((even.min[0], even.opt.clone(), even.max[0]), (8, vec![8, 3, 224, 224], 8));
        // NHWC puts the channels last.
        let mut nhwc = r.clone();
        nhwc.layout = Layout::Nhwc;
        assert_eq!(EngineProfile::derive("x", None, &nhwc, &[], 4).max, vec![4, 448, 448, 3]);
    }
}
