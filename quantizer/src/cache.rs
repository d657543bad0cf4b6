//! TensorRT 10 calibration cache: a `TRT-<version>-EntropyCalibration2` header, then one `tensor: hex` line
//! per activation, hex being the big-endian IEEE-754 bits of scale = amax / 127.

use std::path::Path;

use crate::QuantizeError;

/// TensorRT's version number in cache headers, as TensorRT encodes `NV_TENSORRT_VERSION`: before TensorRT 10
/// major * 1000 + minor * 100 + patch (`8.6.1` -> `8601`), from TensorRT 10 on major * 10000 + minor * 100 +
/// patch (`10.3.0` -> `100300`). Parts that would spill into the next digit, or overflow, are refused.
pub fn trt_version_code(version: &str) -> Result<u32, QuantizeError> {
    let bad = || QuantizeError::TrtVersion(version.to_string());
    let parts: Vec<u32> = version.split('.').map(|p| p.parse::<u32>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    let (major, minor, patch) = match parts.as_slice() {
        [major, minor, patch] => (*major, *minor, *patch),
        [major, minor] => (*major, *minor, 0),
        _ => return Err(bad()),
    };
    match major {
        1..=9 if minor < 10 && patch < 100 => Ok(major * 1000 + minor * 100 + patch),
        10..=99 if minor < 100 && patch < 100 => Ok(major * 10000 + minor * 100 + patch),
        _ => Err(bad()),
    }
}

/// The cache text for `(tensor, scale)` pairs, in the given order. A tensor name that would break the
/// one-tensor-per-line format (a line break or another control character) is refused.
pub fn write_cache(trt_version: &str, scales: &[(String, f32)]) -> Result<String, QuantizeError> {
    let mut text = format!("TRT-{}-EntropyCalibration2\n", trt_version_code(trt_version)?);
    for (name, scale) in scales {
        if name.chars().any(char::is_control) {
            return Err(QuantizeError::CacheName(name.clone()));
        }
        text.push_str(&format!("{name}: {:08x}\n", scale.to_bits()));
    }
    Ok(text)
}

/// A parsed cache: its header and `(tensor, scale)` entries in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationCache {
    /// The header line (`TRT-<version>-EntropyCalibration2`).
    pub header: String,
    /// (tensor, scale) in file order.
    pub entries: Vec<(String, f32)>,
}

/// Reads a cache written by TensorRT or by int8kit. A bare `0` value (which TensorRT writes for some tensors)
/// reads as scale 0.
pub fn parse_cache(text: &str, origin: &Path) -> Result<CalibrationCache, QuantizeError> {
    let bad = |line: usize, message: String| QuantizeError::Cache { path: origin.to_path_buf(), line, message };
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| bad(1, "empty file".into()))?;
    if !header.starts_with("TRT-") {
        return Err(bad(1, format!("header '{header}' does not start with TRT-")));
    }
    let mut entries = Vec::new();
    for (i, line) in lines {
        let (name, hex) = line.rsplit_once(':').ok_or_else(|| bad(i + 1, format!("'{line}' is not 'tensor: hex'")))?;
        let hex = hex.trim();
        let bits = u32::from_str_radix(hex, 16)
            .map_err(|_| bad(i + 1, format!("'{hex}' is not a hexadecimal float32 bit pattern")))?;
        entries.push((name.trim().to_string(), f32::from_bits(bits)));
    }
    Ok(CalibrationCache { header: header.trim().to_string(), entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_round_trip_exactly() {
        let scales =
            vec![("input".to_string(), 2.022_662_9f32 / 127.0), ("/a/b:c".to_string(), 1e-8), ("z".into(), 0.5)];
        let text = write_cache("10.3.0", &scales).unwrap();
        assert!(text.starts_with("TRT-100300-EntropyCalibration2\n"));
        assert!(text.contains("z: 3f000000\n"), "{text}");
        let parsed = parse_cache(&text, Path::new("c")).unwrap();
        assert_eq!(parsed.entries, scales);
    }

    #[test]
    fn versions_encode_as_tensorrt_does_and_overflows_are_refused() {
        assert_eq!(trt_version_code("8.6.1").unwrap(), 8601);
        assert_eq!(trt_version_code("10.3.0").unwrap(), 100300);
        assert_eq!(trt_version_code("10.13").unwrap(), 101300);
        for bad in ["4294967295.0.0", "8.16.0", "10.100.0", "10.3.100", "0.1.0", "100.0.0", "10", "10.x.0", ""] {
            let err = trt_version_code(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("8.6.1 or 10.3.0"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_line_break_in_a_tensor_name_cannot_inject_cache_lines() {
        let scales = vec![("a\nevil: 7f800000".to_string(), 0.5f32)];
        let err = write_cache("10.3.0", &scales).unwrap_err().to_string();
        assert!(err.contains("line break"), "{err}");
        assert!(write_cache("10.3.0", &[("tab\there".to_string(), 0.5)]).is_err());
    }

    #[test]
    fn reads_tensorrt_style_caches_with_bare_zeros() {
        let text = "TRT-8601-EntropyCalibration2\ninput: 3c010a14\n(Unnamed Layer* 3) [Shuffle]_output: 0\n";
        let c = parse_cache(text, Path::new("c")).unwrap();
        assert_eq!(c.header, "TRT-8601-EntropyCalibration2");
        assert_eq!(c.entries[1], ("(Unnamed Layer* 3) [Shuffle]_output".to_string(), 0.0));
        assert!((c.entries[0].1 - f32::from_bits(0x3c010a14)).abs() == 0.0);
        let err = parse_cache("TRT-1-X\nx: zz\n", Path::new("bad.cache")).unwrap_err().to_string();
        assert!(err.contains("bad.cache") && err.contains("line 2"), "{err}");
    }
}
