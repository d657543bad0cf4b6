//! Tensors as samples, for models that do not take one image (a CLIP text tower's `input_ids` and
//! `attention_mask`, multi-input models): a folder of `.npz` files, one sample each, holding one array per
//! model input under the input's name, with a leading batch axis of 1. Batches stack the samples along that
//! axis.

use std::io::Read;
use std::path::Path;

use ndarray_npy::npy::header::Header;

use crate::DatasetError;
pub use feeds::{ArrayData, NamedArray};

/// Most arrays one `.npz` sample may hold.
const MAX_MEMBERS: usize = 256;
/// Largest `.npy` header accepted (numpy writes under 1 KiB).
const MAX_HEADER: usize = 64 << 10;

/// Reads one sample: every array of the `.npz` (plain or compressed), sorted by name, each with a leading
/// batch axis of 1. Bounded before anything is decompressed: every member is checked by name and by its
/// declared size (all together at most [`safe_io::limits::ARRAY`]), its header's shape and type must need
/// exactly the bytes the member declares, decompression stops at that size, and float values must be finite.
pub fn read_npz(path: &Path) -> Result<Vec<NamedArray>, DatasetError> {
    read_npz_within(path, safe_io::limits::ARRAY)
}

/// An `.npz` file opened as the zip archive it is, with at most [`MAX_MEMBERS`] members.
fn open_npz(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>, DatasetError> {
    let bad = |message: String| DatasetError::Tensors { path: path.to_path_buf(), message };
    let file = safe_io::open(path, safe_io::limits::ARRAY, "an .npz sample")?;
    let zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not an .npz file (a zip archive of .npy arrays): {e}")))?;
    if zip.len() > MAX_MEMBERS {
        return Err(bad(format!("holds {} members; a sample holds one array per model input", zip.len())));
    }
    Ok(zip)
}

/// [`read_npz`] with `cap` bytes allowed once decompressed.
fn read_npz_within(path: &Path, cap: u64) -> Result<Vec<NamedArray>, DatasetError> {
    let bad = |message: String| DatasetError::Tensors { path: path.to_path_buf(), message };
    let mut zip = open_npz(path)?;
    let mut members = Vec::with_capacity(zip.len());
    let mut declared_total = 0u64;
    for index in 0..zip.len() {
        let entry = zip.by_index_raw(index).map_err(|e| bad(format!("member {index}: {e}")))?;
        let member = entry.name().to_string();
        let Some(name) = member.strip_suffix(".npy").filter(|n| !n.is_empty() && !n.contains('/')) else {
            return Err(bad(format!("member '{member}' is not an array (.npz members are NAME.npy)")));
        };
        declared_total = declared_total.saturating_add(entry.size());
        if declared_total > cap {
            return Err(bad(format!(
                "its arrays declare {declared_total} bytes once decompressed, more than the {cap} allowed for a \
                 sample; nothing was decompressed"
            )));
        }
        members.push((name.to_string(), index));
    }
    members.sort();
    if let Some(pair) = members.windows(2).find(|p| p[0].0 == p[1].0) {
        return Err(bad(format!("holds the array '{}' twice", pair[0].0)));
    }
    if members.is_empty() {
        return Err(bad("holds no array; one array per model input is expected".into()));
    }
    let mut out = Vec::with_capacity(members.len());
    for (name, index) in members {
        let (shape, data) = read_member(&mut zip, index).map_err(|m| bad(format!("array '{name}': {m}")))?;
        if shape.first() != Some(&1) {
            return Err(bad(format!(
                "array '{name}' has shape {shape:?}: each .npz holds one sample, so every array needs a leading \
                 batch axis of 1 (numpy: x[None])"
            )));
        }
        if let Some((i, v)) = data.first_non_finite() {
            return Err(bad(format!(
                "array '{name}' holds {v} at flat index {i}: sample values must be finite (a NaN or Inf would \
                 poison every statistic computed from it)"
            )));
        }
        out.push(NamedArray { name, shape, data });
    }
    Ok(out)
}

/// One member's array: its header read first (bounded), its shape and type checked against the bytes it
/// declares, then exactly those bytes decompressed.
fn read_member<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    index: usize,
) -> Result<(Vec<usize>, ArrayData), String> {
    let entry = zip.by_index(index).map_err(|e| format!("cannot open: {e}"))?;
    let declared = entry.size();
    // Whatever the archive claims, no more than the declared size is ever decompressed.
    let mut reader = entry.take(declared);
    let (header, element, descr, present) = read_header(&mut reader, declared)?;
    let mut bytes = Vec::with_capacity(present as usize);
    reader.read_to_end(&mut bytes).map_err(|e| format!("cannot decompress its data: {e}"))?;
    if bytes.len() as u64 != present {
        return Err(format!(
            "truncated: shape {:?} of {descr} needs {present} bytes of data, {} could be read",
            header.shape,
            bytes.len()
        ));
    }
    let data = element.decode(&bytes)?;
    let data = if header.layout.is_fortran() { data.to_row_major(&header.shape) } else { data };
    Ok((header.shape, data))
}

/// A member's `.npy` header, read from the start of its data (bounded) and checked against the `declared`
/// bytes: the header, the element type, its numpy descriptor and the data bytes that follow.
fn read_header(reader: &mut impl Read, declared: u64) -> Result<(Header, Element, String, u64), String> {
    let mut prefix = [0u8; 12];
    reader.read_exact(&mut prefix[..10]).map_err(|_| "truncated: no complete .npy header".to_string())?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (no \\x93NUMPY magic)".into());
    }
    let (fixed, header_len) = match prefix[6] {
        1 => (10, u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
        2 | 3 => {
            reader.read_exact(&mut prefix[10..12]).map_err(|_| "truncated: no complete .npy header".to_string())?;
            (12, u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize)
        }
        v => return Err(format!(".npy format version {v} is not one numpy writes (1, 2 or 3)")),
    };
    if header_len > MAX_HEADER {
        return Err(format!("its .npy header declares {header_len} bytes; numpy writes under {MAX_HEADER}"));
    }
    let mut head = prefix[..fixed].to_vec();
    head.resize(fixed + header_len, 0);
    reader.read_exact(&mut head[fixed..]).map_err(|_| "truncated: the .npy header is cut short".to_string())?;
    let header = Header::from_reader(&mut std::io::Cursor::new(&head)).map_err(|e| format!("bad .npy header: {e}"))?;
    // A plain type is a Python string literal ('<f4'); structured types are lists.
    let descr = header.type_descriptor.to_string().trim_matches(|c| c == '\'' || c == '"').to_string();
    let element = Element::parse(&descr).ok_or_else(|| {
        format!(
            "element type '{descr}' is not float32, float16, float64, int64, int32, int16, int8, uint16, uint8 or bool"
        )
    })?;
    let count = header.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let needed = count.and_then(|n| n.checked_mul(element.size)).map(|b| b as u64);
    let present = declared.saturating_sub(head.len() as u64);
    match needed {
        Some(n) if n == present => {}
        Some(n) if n > present => {
            return Err(format!(
                "truncated: shape {:?} of {descr} needs {n} bytes of data, the member holds {present}",
                header.shape
            ))
        }
        Some(n) => {
            return Err(format!(
                "shape {:?} of {descr} needs {n} bytes of data, but the member holds {present}: not one array",
                header.shape
            ))
        }
        None => return Err(format!("shape {:?} has more elements than memory can address", header.shape)),
    }
    Ok((header, element, descr, present))
}

/// The shape of every array of an `.npz` sample (sorted by name, leading batch axis included), from the
/// arrays' headers alone: a few hundred bytes decompressed per array, none of the data.
pub fn npz_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>)>, DatasetError> {
    let bad = |message: String| DatasetError::Tensors { path: path.to_path_buf(), message };
    let mut zip = open_npz(path)?;
    let mut shapes = Vec::with_capacity(zip.len());
    for index in 0..zip.len() {
        let entry = zip.by_index(index).map_err(|e| bad(format!("member {index}: {e}")))?;
        let name = entry.name().strip_suffix(".npy").unwrap_or(entry.name()).to_string();
        let declared = entry.size();
        let (header, ..) =
            read_header(&mut entry.take(declared), declared).map_err(|m| bad(format!("array '{name}': {m}")))?;
        shapes.push((name, header.shape));
    }
    shapes.sort();
    Ok(shapes)
}

/// One sample shape of an `.npz` folder: each array's name and shape past the batch axis.
pub type SampleShape = Vec<(String, Vec<usize>)>;

/// The `.npz` samples of `dataset` grouped by [`SampleShape`], in the order each shape first appears, each
/// group a dataset of its samples in list order (headers read only). One group when every sample has one shape.
pub fn shape_groups(dataset: &crate::Dataset) -> Result<Vec<(SampleShape, crate::Dataset)>, DatasetError> {
    let mut groups: Vec<(SampleShape, crate::Dataset)> = Vec::new();
    for item in &dataset.items {
        let shape: SampleShape = npz_shapes(&item.path)?
            .into_iter()
            .map(|(name, shape)| (name, shape.get(1..).unwrap_or_default().to_vec()))
            .collect();
        match groups.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, group)) => group.items.push(item.clone()),
            None => groups.push((
                shape,
                crate::Dataset {
                    root: dataset.root.clone(),
                    items: vec![item.clone()],
                    classes: dataset.classes.clone(),
                },
            )),
        }
    }
    Ok(groups)
}

/// A numpy element type as stored: which array it becomes, its size, its byte order.
struct Element {
    kind: char,
    size: usize,
    big_endian: bool,
}

impl Element {
    fn parse(descr: &str) -> Option<Element> {
        let (order, code) = descr.split_at_checked(1)?;
        let big_endian = match order {
            "<" | "|" | "=" => false,
            ">" => true,
            _ => return None,
        };
        let (kind, size) = match code {
            "f4" => ('f', 4),
            "f2" => ('f', 2),
            "f8" => ('f', 8),
            "i8" => ('i', 8),
            "i4" => ('i', 4),
            "i2" => ('i', 2),
            "i1" => ('i', 1),
            "u1" => ('u', 1),
            "u2" => ('u', 2),
            "b1" => ('b', 1),
            _ => return None,
        };
        Some(Element { kind, size, big_endian })
    }

    fn decode(&self, bytes: &[u8]) -> Result<ArrayData, String> {
        macro_rules! values {
            ($t:ty, $n:literal) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        let a: [u8; $n] = c.try_into().expect("chunks_exact");
                        if self.big_endian {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        }
                    })
                    .collect()
            };
        }
        Ok(match (self.kind, self.size) {
            ('f', 4) => ArrayData::F32(values!(f32, 4)),
            // float16 samples (for a model with an FP16 input) are held as float32, exactly, and narrowed again
            // at the model's edge.
            ('f', 2) => {
                let bits: Vec<u16> = values!(u16, 2);
                ArrayData::F32(bits.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect())
            }
            ('f', 8) => ArrayData::F64(values!(f64, 8)),
            ('i', 8) => ArrayData::I64(values!(i64, 8)),
            ('i', 4) => ArrayData::I32(values!(i32, 4)),
            ('i', 2) => ArrayData::I16(values!(i16, 2)),
            ('i', 1) => ArrayData::I8(values!(i8, 1)),
            ('u', 1) => ArrayData::U8(bytes.to_vec()),
            ('u', 2) => ArrayData::U16(values!(u16, 2)),
            ('b', 1) => {
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(format!("bool value {} at flat index {i} is neither 0 nor 1", bytes[i]));
                }
                ArrayData::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            _ => unreachable!("Element::parse makes only these"),
        })
    }
}

/// Splits samples into runs of consecutive samples whose arrays have the same shapes past the batch axis (a text
/// tower's samples of different sequence lengths, tensors of several resolutions), each run to be stacked into
/// a batch of its own. Every sample must hold the same arrays (names and element types) as the first.
pub fn shape_runs(
    samples: &[(std::path::PathBuf, Vec<NamedArray>)],
) -> Result<Vec<std::ops::Range<usize>>, DatasetError> {
    let Some((first_path, first)) = samples.first() else { return Ok(Vec::new()) };
    let kinds = |s: &[NamedArray]| s.iter().map(|a| (a.name.clone(), a.data.dtype())).collect::<Vec<_>>();
    let shapes = |s: &[NamedArray]| s.iter().map(|a| a.shape[1..].to_vec()).collect::<Vec<_>>();
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, (path, sample)) in samples.iter().enumerate().skip(1) {
        if kinds(sample) != kinds(first) {
            return Err(DatasetError::Tensors {
                path: path.clone(),
                message: format!(
                    "holds arrays {:?}, other ones than {} holds {:?} (every sample needs the same arrays)",
                    kinds(sample),
                    first_path.display(),
                    kinds(first)
                ),
            });
        }
        if shapes(sample) != shapes(&samples[start].1) {
            runs.push(start..i);
            start = i;
        }
    }
    runs.push(start..samples.len());
    Ok(runs)
}

/// Stacks samples into one batch: the same arrays (names, element types, shapes past the batch axis) in every
/// sample, concatenated along the batch axis.
pub fn stack(samples: &[(std::path::PathBuf, Vec<NamedArray>)]) -> Result<Vec<NamedArray>, DatasetError> {
    let Some((first_path, first)) = samples.first() else { return Ok(Vec::new()) };
    let mut batch = first.clone();
    for (path, sample) in &samples[1..] {
        let differs = |message: String| DatasetError::Tensors {
            path: path.clone(),
            message: format!("{message} than {} (every sample needs the same arrays)", first_path.display()),
        };
        let names = |s: &[NamedArray]| s.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
        if names(sample) != names(&batch) {
            return Err(differs(format!("holds arrays {:?}, other ones", names(sample))));
        }
        for (b, a) in batch.iter_mut().zip(sample) {
            if a.shape[1..] != b.shape[1..] {
                return Err(differs(format!("array '{}' has shape {:?}, another", a.name, a.shape)));
            }
            if !b.data.extend(&a.data) {
                return Err(differs(format!("array '{}' is {}, another type", a.name, a.data.dtype())));
            }
            b.shape[0] += a.shape[0];
        }
    }
    debug_assert!(batch.iter().all(|a| a.shape.iter().product::<usize>() == a.data.len()));
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::NpzWriter;

    fn write(path: &Path, ids: &[i64], mask: &[i64]) {
        let mut npz = NpzWriter::new(std::fs::File::create(path).unwrap());
        npz.add_array("input_ids", &ndarray::Array2::from_shape_vec((1, ids.len()), ids.to_vec()).unwrap()).unwrap();
        npz.add_array("attention_mask", &ndarray::Array2::from_shape_vec((1, mask.len()), mask.to_vec()).unwrap())
            .unwrap();
        npz.finish().unwrap();
    }

    #[test]
    fn samples_read_by_name_and_stack_along_the_batch_axis() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.npz"), d.path().join("b.npz"));
        write(&a, &[1, 2, 3], &[1, 1, 0]);
        write(&b, &[4, 5, 6], &[1, 0, 0]);
        let sa = read_npz(&a).unwrap();
        assert_eq!(sa.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["attention_mask", "input_ids"]);
        let batch = stack(&[(a.clone(), sa), (b.clone(), read_npz(&b).unwrap())]).unwrap();
        assert_eq!(batch[1].shape, vec![2, 3]);
        assert_eq!(batch[1].data, ArrayData::I64(vec![1, 2, 3, 4, 5, 6]));
        // Another length: refused naming the file and the array.
        let c = d.path().join("c.npz");
        write(&c, &[1, 2], &[1, 1]);
        let err = stack(&[(a.clone(), read_npz(&a).unwrap()), (c, read_npz(&d.path().join("c.npz")).unwrap())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.npz") && err.contains("attention_mask") && err.contains("[1, 2]"), "{err}");
    }

    /// A zip of one stored member `name` with these bytes.
    fn zip_of(path: &Path, name: &str, bytes: &[u8]) {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file(name, stored).unwrap();
        z.write_all(bytes).unwrap();
        z.finish().unwrap();
    }

    /// An .npy version 1 header for `descr` and `shape`, padded as numpy pads it.
    fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
        let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out
    }

    #[test]
    fn float16_arrays_are_held_as_their_exact_float32_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npz");
        let values = [1.0f32, -0.333_251_95, 65504.0, 5.960_464_5e-8];
        let mut bytes = npy_header("<f2", "(1, 4)");
        bytes.extend(values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()));
        zip_of(&p, "x.npy", &bytes);
        let read = read_npz(&p).unwrap();
        assert_eq!(read[0].data, ArrayData::F32(values.to_vec()), "each float16 value widened exactly");
        // Big-endian float16 too.
        let mut bytes = npy_header(">f2", "(1, 2)");
        bytes.extend([1.5f32, -2.0].iter().flat_map(|&v| half::f16::from_f32(v).to_be_bytes()));
        zip_of(&p, "x.npy", &bytes);
        assert_eq!(read_npz(&p).unwrap()[0].data, ArrayData::F32(vec![1.5, -2.0]));
    }

    #[test]
    fn sizes_are_checked_before_anything_is_allocated_or_decompressed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npz");
        // A shape of 2.2e10 floats with 3 KB of data: refused from the header, nothing allocated.
        let mut bytes = npy_header("<f4", "(1, 1, 28, 28000000000)");
        bytes.extend(vec![0u8; 3136]);
        zip_of(&p, "x.npy", &bytes);
        let err = read_npz(&p).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("28000000000"), "{err}");
        // Data cut short of its shape: said as such, not as a type problem.
        let mut bytes = npy_header("<f4", "(1, 4)");
        bytes.extend([0u8; 12]);
        zip_of(&p, "x.npy", &bytes);
        let err = read_npz(&p).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("needs 16 bytes"), "{err}");
        // A member that inflates beyond the cap is refused by its declared size, before decompression.
        let mut npz = NpzWriter::new_compressed(std::fs::File::create(&p).unwrap());
        npz.add_array("x", &ndarray::Array2::<f32>::zeros((1, 1 << 20))).unwrap();
        npz.finish().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() < 100_000, "compressed");
        let err = read_npz_within(&p, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("nothing was decompressed"), "{err}");
        assert_eq!(read_npz(&p).unwrap()[0].data.len(), 1 << 20);
        // NaN and Inf samples are refused, naming the array and the index.
        let mut npz = NpzWriter::new(std::fs::File::create(&p).unwrap());
        npz.add_array(
            "pixel_values",
            &ndarray::Array2::from_shape_vec((1, 3), vec![0.0f32, f32::INFINITY, 1.0]).unwrap(),
        )
        .unwrap();
        npz.finish().unwrap();
        let err = read_npz(&p).unwrap_err().to_string();
        assert!(err.contains("'pixel_values'") && err.contains("inf at flat index 1"), "{err}");
        // Column-major arrays are read in row-major order.
        let mut npz = NpzWriter::new(std::fs::File::create(&p).unwrap());
        use ndarray::ShapeBuilder;
        let a = ndarray::Array3::from_shape_vec((1, 2, 3).f(), vec![1i64, 4, 2, 5, 3, 6]).unwrap();
        assert!(!a.is_standard_layout());
        npz.add_array("ids", &a).unwrap();
        npz.finish().unwrap();
        assert_eq!(read_npz(&p).unwrap()[0].data, ArrayData::I64(vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn a_missing_batch_axis_or_a_file_that_is_not_npz_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npz");
        let mut npz = NpzWriter::new(std::fs::File::create(&p).unwrap());
        npz.add_array("input_ids", &ndarray::Array1::from(vec![1i64, 2])).unwrap();
        npz.finish().unwrap();
        let err = read_npz(&p).unwrap_err().to_string();
        assert!(err.contains("leading batch axis of 1") && err.contains("input_ids"), "{err}");
        std::fs::write(&p, b"not a zip").unwrap();
        assert!(read_npz(&p).unwrap_err().to_string().contains("not an .npz file"));
    }
}
