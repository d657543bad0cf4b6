//! Tensors as samples, for models that do not take one image (a CLIP text tower's `input_ids` and
//! `attention_mask`, multi-input models): a folder of `.npz` files, one sample each, holding one array per
//! model input under the input's name, with a leading batch axis of 1. Batches stack the samples along that
//! axis.

use std::path::Path;

use ndarray::{ArrayD, IxDyn, OwnedRepr};
use ndarray_npy::NpzReader;

use crate::DatasetError;
pub use feeds::{ArrayData, NamedArray};

/// Reads one sample: every array of the `.npz` (plain or compressed), sorted by name, each with a leading
/// batch axis of 1.
pub fn read_npz(path: &Path) -> Result<Vec<NamedArray>, DatasetError> {
    let bad = |message: String| DatasetError::Tensors { path: path.to_path_buf(), message };
    let file = safe_io::open(path, safe_io::limits::ARRAY, "an .npz sample")?;
    let mut npz = NpzReader::new(std::io::BufReader::new(file)).map_err(|e| bad(format!("not an .npz file: {e}")))?;
    let mut names = npz.names().map_err(|e| bad(e.to_string()))?;
    names.sort();
    if names.is_empty() {
        return Err(bad("holds no array; one array per model input is expected".into()));
    }
    let mut out = Vec::with_capacity(names.len());
    for member in names {
        let name = member.strip_suffix(".npy").unwrap_or(&member).to_string();
        let (shape, data) = read_member(&mut npz, &member).map_err(|m| bad(format!("array '{name}': {m}")))?;
        if shape.first() != Some(&1) {
            return Err(bad(format!(
                "array '{name}' has shape {shape:?}: each .npz holds one sample, so every array needs a leading \
                 batch axis of 1 (numpy: x[None])"
            )));
        }
        out.push(NamedArray { name, shape, data });
    }
    Ok(out)
}

/// An array member in whichever element type it has.
fn read_member<R: std::io::Read + std::io::Seek>(
    npz: &mut NpzReader<R>,
    member: &str,
) -> Result<(Vec<usize>, ArrayData), String> {
    fn take<R: std::io::Read + std::io::Seek, T: ndarray_npy::ReadableElement + Clone>(
        npz: &mut NpzReader<R>,
        member: &str,
    ) -> Option<(Vec<usize>, Vec<T>)> {
        let a: ArrayD<T> = npz.by_name::<OwnedRepr<T>, IxDyn>(member).ok()?;
        let shape = a.shape().to_vec();
        // Row-major values whatever the file's order.
        Some((shape, a.as_standard_layout().iter().cloned().collect()))
    }
    macro_rules! try_types {
        ($($t:ty => $variant:ident),*) => {
            $(if let Some((s, v)) = take::<R, $t>(npz, member) {
                return Ok((s, ArrayData::$variant(v)));
            })*
        };
    }
    try_types!(f32 => F32, i64 => I64, i32 => I32, f64 => F64, u8 => U8, i8 => I8, i16 => I16, u16 => U16, bool => Bool);
    Err("not an array of float32, float64, int64, int32, int16, int8, uint16, uint8 or bool".into())
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
