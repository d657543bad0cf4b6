//! Per-channel max |x| along a tensor's last axis: what SmoothQuant-style smoothing needs of the inputs of
//! quantized GEMMs. The merge is an elementwise max, so it is exact whatever the batching.

use serde::{Deserialize, Serialize};

/// The largest |x| seen in each channel of the last axis; NaN/Inf are left out, as in [`crate::TensorStats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelMax {
    /// One maximum per channel; empty before the first values.
    pub max: Vec<f32>,
}

/// Values whose last axis does not have the channel count seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelMismatch {
    /// Channels seen so far.
    pub had: usize,
    /// Channels of the new values.
    pub got: usize,
}

impl ChannelMax {
    /// Folds in `values`, rows of `channels` values each (a tensor whose last axis has `channels` entries).
    pub fn add(&mut self, values: &[f32], channels: usize) -> Result<(), ChannelMismatch> {
        self.start(values, channels, 1)?;
        for row in values.chunks_exact(channels) {
            for (m, &v) in self.max.iter_mut().zip(row) {
                *m = raised(*m, v);
            }
        }
        Ok(())
    }

    /// Folds in `values` of an NCHW-like tensor: `outer` blocks of `channels` planes of `inner` values each
    /// (the channels on axis 1, as a Conv reads them).
    pub fn add_planes(&mut self, values: &[f32], channels: usize, inner: usize) -> Result<(), ChannelMismatch> {
        self.start(values, channels, inner)?;
        for block in values.chunks_exact(channels * inner) {
            for (m, plane) in self.max.iter_mut().zip(block.chunks_exact(inner)) {
                *m = plane_max(plane, *m);
            }
        }
        Ok(())
    }

    /// Checks that `values` hold whole blocks of `channels` x `inner` and that the channel count is the one seen
    /// before (the first values set it).
    fn start(&mut self, values: &[f32], channels: usize, inner: usize) -> Result<(), ChannelMismatch> {
        if channels == 0 || inner == 0 || !values.len().is_multiple_of(channels * inner) {
            return Err(ChannelMismatch { had: self.max.len(), got: channels });
        }
        if self.max.is_empty() {
            self.max = vec![0.0; channels];
        } else if self.max.len() != channels {
            return Err(ChannelMismatch { had: self.max.len(), got: channels });
        }
        Ok(())
    }

    /// The elementwise max with `other` (the statistics of another chunk of images).
    pub fn merge(&mut self, other: &ChannelMax) -> Result<(), ChannelMismatch> {
        if self.max.is_empty() {
            self.max = other.max.clone();
            return Ok(());
        }
        if other.max.is_empty() {
            return Ok(());
        }
        if other.max.len() != self.max.len() {
            return Err(ChannelMismatch { had: self.max.len(), got: other.max.len() });
        }
        for (m, o) in self.max.iter_mut().zip(&other.max) {
            *m = m.max(*o);
        }
        Ok(())
    }

    /// The largest channel maximum (0 when empty).
    pub fn amax(&self) -> f32 {
        self.max.iter().copied().fold(0.0, f32::max)
    }
}

/// A channel's maximum `m` raised to |v|; NaN and Inf are skipped (both fail `a <= f32::MAX`), a signed zero
/// has abs +0.0. A select, not a branch, so that loops over it vectorize.
#[inline(always)]
fn raised(m: f32, v: f32) -> f32 {
    let a = v.abs();
    if a <= f32::MAX && a > m {
        a
    } else {
        m
    }
}

/// [`raised`] over a whole plane, in 16 independent lanes (a max is the same in any order, so the result is
/// that of one running maximum): one plane of a depthwise Conv's input is a feature map of thousands of values.
fn plane_max(plane: &[f32], m: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [m; LANES];
    let chunks = plane.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = raised(*l, v);
        }
    }
    let m = rest.iter().fold(m, |m, &v| raised(m, v));
    lanes.into_iter().fold(m, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_take_their_channel_from_axis_one() {
        // Two images of 2 channels x 3 values: channel 0 then channel 1, per image.
        let values = [1.0, -4.0, 0.5, 2.0, 0.0, -1.0, 3.0, f32::NAN, 0.0, -0.5, 7.0, 1.0];
        let mut c = ChannelMax::default();
        c.add_planes(&values, 2, 3).unwrap();
        assert_eq!(c.max, vec![4.0, 7.0]);
        assert!(c.add_planes(&values[..5], 2, 3).is_err(), "a partial image");
        assert_eq!(c.add_planes(&values, 3, 2), Err(ChannelMismatch { had: 2, got: 3 }));
    }

    #[test]
    fn planes_of_any_length_give_the_running_maximum() {
        // Lengths around the lane count, with NaN, Inf, -Inf, signed zeros and the largest finite value.
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MAX, -f32::MAX];
        let mut seed = 7u64;
        for len in [1, 15, 16, 17, 31, 33, 100] {
            for with_specials in [false, true] {
                let plane: Vec<f32> = (0..len)
                    .map(|i| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if with_specials && i % 5 == 0 {
                            specials[(seed >> 60) as usize % specials.len()]
                        } else {
                            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
                        }
                    })
                    .collect();
                let expected = plane.iter().map(|v| v.abs()).filter(|a| a.is_finite()).fold(0.5f32, f32::max);
                assert_eq!(plane_max(&plane, 0.5).to_bits(), expected.to_bits(), "{len} {with_specials}");
            }
        }
    }

    #[test]
    fn per_channel_maxima_merge_exactly_and_skip_non_finite_values() {
        let rows = [1.0, -5.0, 0.5, -2.0, 3.0, f32::NAN, 0.25, f32::INFINITY, -1.0];
        let mut whole = ChannelMax::default();
        whole.add(&rows, 3).unwrap();
        assert_eq!(whole.max, vec![2.0, 5.0, 1.0]);
        let (mut a, mut b) = (ChannelMax::default(), ChannelMax::default());
        a.add(&rows[..3], 3).unwrap();
        b.add(&rows[3..], 3).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, whole);
        assert_eq!(whole.amax(), 5.0);
        assert_eq!(whole.add(&[1.0, 2.0], 2), Err(ChannelMismatch { had: 3, got: 2 }));
        assert!(whole.add(&[1.0, 2.0], 3).is_err(), "a partial row");
    }
}
