//! Decoding and the PIL/torchvision transform chain: convert -> Resize -> CenterCrop -> ToTensor -> Normalize.

use std::path::Path;

use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::DynamicImage;

use crate::{Channels, DatasetError, Interpolation, Layout, Recipe, ResizeMode};

/// 8-bit interleaved pixels with 1 (gray) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Channels per pixel (1 or 3).
    pub channels: usize,
    /// Interleaved 8-bit values, row by row.
    pub data: Vec<u8>,
}

/// 16-bit samples map to 8 bits by rounding v/257 (PIL clips 16-bit grayscale at 255 instead, which
/// destroys real 16-bit images; this is a deliberate difference).
fn to_u8(v: u16) -> u8 {
    ((v as u32 * 255 + 32767) / 65535) as u8
}

/// PIL's ITU-R 601-2 luma with its fixed-point rounding (`convert("L")`).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

fn rgb_to(channels: Channels, width: u32, height: u32, rgb: Vec<u8>) -> Pixels {
    match channels {
        Channels::Gray => {
            let data = rgb.chunks_exact(3).map(|p| luma(p[0], p[1], p[2])).collect();
            Pixels { width, height, channels: 1, data }
        }
        // Channel order (BGR) is applied when writing floats, after resizing.
        Channels::Rgb | Channels::Bgr => Pixels { width, height, channels: 3, data: rgb },
    }
}

fn gray_to(channels: Channels, width: u32, height: u32, gray: Vec<u8>) -> Pixels {
    match channels {
        Channels::Gray => Pixels { width, height, channels: 1, data: gray },
        Channels::Rgb | Channels::Bgr => {
            Pixels { width, height, channels: 3, data: gray.iter().flat_map(|&v| [v, v, v]).collect() }
        }
    }
}

/// Decodes an image and converts it to the recipe's colour model, as PIL's `convert("L")` / `convert("RGB")`
/// would (alpha is dropped, not composited).
pub fn load_pixels(path: &Path, channels: Channels) -> Result<Pixels, DatasetError> {
    let io = |source| DatasetError::Io { path: path.to_path_buf(), source };
    // A FIFO among the images would block the decoder forever; a huge file would be read whole.
    safe_io::check(path, safe_io::limits::IMAGE, "an image")?;
    let reader = image::ImageReader::open(path).map_err(io)?.with_guessed_format().map_err(io)?;
    let img = reader.decode().map_err(|source| DatasetError::BadImage { path: path.to_path_buf(), source })?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(DatasetError::NoPixels { path: path.to_path_buf() });
    }
    Ok(match img {
        DynamicImage::ImageLuma8(b) => gray_to(channels, w, h, b.into_raw()),
        DynamicImage::ImageLumaA8(b) => gray_to(channels, w, h, b.into_raw().chunks_exact(2).map(|p| p[0]).collect()),
        DynamicImage::ImageLuma16(b) => gray_to(channels, w, h, b.into_raw().into_iter().map(to_u8).collect()),
        DynamicImage::ImageLumaA16(b) => {
            gray_to(channels, w, h, b.into_raw().chunks_exact(2).map(|p| to_u8(p[0])).collect())
        }
        DynamicImage::ImageRgb8(b) => rgb_to(channels, w, h, b.into_raw()),
        DynamicImage::ImageRgba8(b) => {
            rgb_to(channels, w, h, b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect())
        }
        DynamicImage::ImageRgb16(b) => rgb_to(channels, w, h, b.into_raw().into_iter().map(to_u8).collect()),
        DynamicImage::ImageRgba16(b) => rgb_to(
            channels,
            w,
            h,
            b.into_raw().chunks_exact(4).flat_map(|p| [to_u8(p[0]), to_u8(p[1]), to_u8(p[2])]).collect(),
        ),
        other => rgb_to(channels, w, h, other.to_rgb8().into_raw()),
    })
}

fn resize(path: &Path, src: Pixels, width: u32, height: u32, interp: Interpolation) -> Result<Pixels, DatasetError> {
    if src.width == width && src.height == height {
        return Ok(src); // PIL returns a copy for a same-size resize
    }
    let pixel_type = if src.channels == 1 { PixelType::U8 } else { PixelType::U8x3 };
    let src_img = Image::from_vec_u8(src.width, src.height, src.data, pixel_type)
        .map_err(|source| DatasetError::Buffer { path: path.to_path_buf(), source })?;
    let alg = match interp {
        Interpolation::Nearest => ResizeAlg::Nearest,
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        // PIL's BICUBIC is the cubic convolution with a = -0.5, i.e. Catmull-Rom.
        Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
    };
    let options = ResizeOptions::new().resize_alg(alg);
    let mut resizer = Resizer::new();
    let mut pass = |from: &Image, w: u32, h: u32| -> Result<Image<'static>, DatasetError> {
        let mut to = Image::new(w, h, pixel_type);
        resizer
            .resize(from, &mut to, &options)
            .map_err(|source| DatasetError::Resize { path: path.to_path_buf(), source })?;
        Ok(to)
    };
    // Pillow filters rows first, rounds to 8 bits, then filters columns. fast_image_resize would do the
    // vertical pass first for 8-bit images, which differs by up to 4 levels with bicubic overshoot, so the
    // two passes are run separately in Pillow's order.
    let dst = if interp == Interpolation::Nearest {
        pass(&src_img, width, height)?
    } else {
        let horizontal = if width != src.width { pass(&src_img, width, src.height)? } else { src_img };
        if height != src.height {
            pass(&horizontal, width, height)?
        } else {
            horizontal
        }
    };
    Ok(Pixels { width, height, channels: src.channels, data: dst.into_vec() })
}

/// torchvision's `Resize(int)` output size: the shorter side becomes `target`, the longer one
/// `int(target * long / short)` (truncated, in double precision as Python computes it).
fn shorter_side_size(width: u32, height: u32, target: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (target as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (target, new_long)
    } else {
        (new_long, target)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((size - crop) / 2.0))`, with Python's round-half-to-even.
fn crop_offset(size: u32, crop: u32) -> u32 {
    let d = size - crop;
    let half = d / 2;
    if d.is_multiple_of(2) || half.is_multiple_of(2) {
        half
    } else {
        half + 1
    }
}

fn center_crop(path: &Path, src: Pixels, width: u32, height: u32) -> Result<Pixels, DatasetError> {
    if src.width < width || src.height < height {
        return Err(DatasetError::TooSmall {
            path: path.to_path_buf(),
            width: src.width,
            height: src.height,
            want_w: width,
            want_h: height,
        });
    }
    if src.width == width && src.height == height {
        return Ok(src);
    }
    let (left, top) = (crop_offset(src.width, width) as usize, crop_offset(src.height, height) as usize);
    let c = src.channels;
    let row = src.width as usize * c;
    let mut data = Vec::with_capacity(width as usize * height as usize * c);
    for y in top..top + height as usize {
        let start = y * row + left * c;
        data.extend_from_slice(&src.data[start..start + width as usize * c]);
    }
    Ok(Pixels { width, height, channels: c, data })
}

/// Resize and crop as the recipe says; the result has exactly the recipe's size.
pub fn apply_geometry(path: &Path, src: Pixels, recipe: &Recipe) -> Result<Pixels, DatasetError> {
    let [h, w] = recipe.size;
    match recipe.resize {
        ResizeMode::Exact => resize(path, src, w, h, recipe.interpolation),
        ResizeMode::None => center_crop(path, src, w, h),
        ResizeMode::Shorter => {
            let target = recipe.resize_to.unwrap_or(h.min(w));
            let (rw, rh) = shorter_side_size(src.width, src.height, target);
            let resized = resize(path, src, rw, rh, recipe.interpolation)?;
            center_crop(path, resized, w, h)
        }
    }
}

/// Writes normalized floats for pixels that already have the recipe's size into `out` (one image).
pub fn write_tensor(px: &Pixels, recipe: &Recipe, out: &mut [f32]) {
    let (h, w, c) = (px.height as usize, px.width as usize, px.channels);
    // Same float32 operations as ToTensor then Normalize: x / 255, then (x - mean) / std.
    let uint8 = recipe.dtype == crate::InputType::Uint8;
    for ch in 0..c {
        let src_ch = if recipe.channels == Channels::Bgr { c - 1 - ch } else { ch };
        // uint8 inputs take the levels as they are (whole numbers, exact in float32 and converted back when fed).
        let (mean, std) = if uint8 { (0.0, 1.0) } else { (recipe.mean[ch], recipe.std[ch]) };
        let scale = if uint8 { 1.0 } else { recipe.scale };
        for y in 0..h {
            for x in 0..w {
                let v = (px.data[(y * w + x) * c + src_ch] as f32 / scale - mean) / std;
                let idx = match recipe.layout {
                    Layout::Nchw => (ch * h + y) * w + x,
                    Layout::Nhwc => (y * w + x) * c + ch,
                };
                out[idx] = v;
            }
        }
    }
}

/// Decode, convert, resize, crop and normalize one image into `out` (`recipe.image_len()` floats).
pub fn preprocess_file(path: &Path, recipe: &Recipe, out: &mut [f32]) -> Result<(), DatasetError> {
    let px = load_pixels(path, recipe.channels)?;
    let px = apply_geometry(path, px, recipe)?;
    write_tensor(&px, recipe, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_geometry_rules() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_size(300, 300, 224), (224, 224));
        // Python: int(round(33 / 2.0)) == 16, int(round(35 / 2.0)) == 18 (half to even).
        assert_eq!(crop_offset(257, 224), 16);
        assert_eq!(crop_offset(259, 224), 18);
        assert_eq!(crop_offset(256, 224), 16);
    }

    #[test]
    fn luma_matches_pil_on_primaries() {
        // Values from PIL: Image.new("RGB", (1,1), c).convert("L").getpixel((0,0)).
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
    }
}
