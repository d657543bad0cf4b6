//! The values fed to a model's inputs. `datasets` makes them (preprocessed images, `.npz` samples) and
//! `runtime` hands them to ONNX Runtime; this crate is what the two share without depending on each other.

/// An array's values, in the element type they are stored in.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// float32.
    F32(Vec<f32>),
    /// float64.
    F64(Vec<f64>),
    /// int64 (token ids, masks).
    I64(Vec<i64>),
    /// int32.
    I32(Vec<i32>),
    /// int16.
    I16(Vec<i16>),
    /// int8.
    I8(Vec<i8>),
    /// uint8.
    U8(Vec<u8>),
    /// uint16.
    U16(Vec<u16>),
    /// bool.
    Bool(Vec<bool>),
}

impl ArrayData {
    /// The element type's name, as numpy and ONNX spell it (`float32`, `int64`, ...).
    pub fn dtype(&self) -> &'static str {
        self.view().dtype()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s values; false (and nothing appended) when the element types differ.
    pub fn extend(&mut self, other: &ArrayData) -> bool {
        match (self, other) {
            (ArrayData::F32(a), ArrayData::F32(b)) => a.extend_from_slice(b),
            (ArrayData::F64(a), ArrayData::F64(b)) => a.extend_from_slice(b),
            (ArrayData::I64(a), ArrayData::I64(b)) => a.extend_from_slice(b),
            (ArrayData::I32(a), ArrayData::I32(b)) => a.extend_from_slice(b),
            (ArrayData::I16(a), ArrayData::I16(b)) => a.extend_from_slice(b),
            (ArrayData::I8(a), ArrayData::I8(b)) => a.extend_from_slice(b),
            (ArrayData::U8(a), ArrayData::U8(b)) => a.extend_from_slice(b),
            (ArrayData::U16(a), ArrayData::U16(b)) => a.extend_from_slice(b),
            (ArrayData::Bool(a), ArrayData::Bool(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Splits off the values from index `at` on (the rest of the batch past its first samples).
    pub fn split_off(&mut self, at: usize) -> ArrayData {
        match self {
            ArrayData::F32(v) => ArrayData::F32(v.split_off(at)),
            ArrayData::F64(v) => ArrayData::F64(v.split_off(at)),
            ArrayData::I64(v) => ArrayData::I64(v.split_off(at)),
            ArrayData::I32(v) => ArrayData::I32(v.split_off(at)),
            ArrayData::I16(v) => ArrayData::I16(v.split_off(at)),
            ArrayData::I8(v) => ArrayData::I8(v.split_off(at)),
            ArrayData::U8(v) => ArrayData::U8(v.split_off(at)),
            ArrayData::U16(v) => ArrayData::U16(v.split_off(at)),
            ArrayData::Bool(v) => ArrayData::Bool(v.split_off(at)),
        }
    }

    /// `n` zeros (false for bool) of `dtype` (a name [`ArrayData::dtype`] gives); `None` for another name.
    pub fn zeros(dtype: &str, n: usize) -> Option<ArrayData> {
        Some(match dtype {
            "float32" => ArrayData::F32(vec![0.0; n]),
            "float64" => ArrayData::F64(vec![0.0; n]),
            "int64" => ArrayData::I64(vec![0; n]),
            "int32" => ArrayData::I32(vec![0; n]),
            "int16" => ArrayData::I16(vec![0; n]),
            "int8" => ArrayData::I8(vec![0; n]),
            "uint8" => ArrayData::U8(vec![0; n]),
            "uint16" => ArrayData::U16(vec![0; n]),
            "bool" => ArrayData::Bool(vec![false; n]),
            _ => return None,
        })
    }

    /// The values, borrowed.
    /// The first NaN or Inf of a float array (its flat index and value), if any.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            ArrayData::F32(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i] as f64)),
            ArrayData::F64(v) => v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i])),
            _ => None,
        }
    }

    /// The values of an array stored in column-major (Fortran) order with these dimensions, in row-major
    /// order, as everything else holds them.
    pub fn to_row_major(self, shape: &[usize]) -> ArrayData {
        fn reorder<T: Clone>(v: Vec<T>, shape: &[usize]) -> Vec<T> {
            if shape.len() < 2 {
                return v;
            }
            // Column-major strides; walk the row-major indices in order.
            let mut strides = vec![1usize; shape.len()];
            for k in 1..shape.len() {
                strides[k] = strides[k - 1] * shape[k - 1];
            }
            let mut index = vec![0usize; shape.len()];
            let mut out = Vec::with_capacity(v.len());
            for _ in 0..v.len() {
                out.push(v[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()].clone());
                for k in (0..shape.len()).rev() {
                    index[k] += 1;
                    if index[k] < shape[k] {
                        break;
                    }
                    index[k] = 0;
                }
            }
            out
        }
        match self {
            ArrayData::F32(v) => ArrayData::F32(reorder(v, shape)),
            ArrayData::F64(v) => ArrayData::F64(reorder(v, shape)),
            ArrayData::I64(v) => ArrayData::I64(reorder(v, shape)),
            ArrayData::I32(v) => ArrayData::I32(reorder(v, shape)),
            ArrayData::I16(v) => ArrayData::I16(reorder(v, shape)),
            ArrayData::I8(v) => ArrayData::I8(reorder(v, shape)),
            ArrayData::U8(v) => ArrayData::U8(reorder(v, shape)),
            ArrayData::U16(v) => ArrayData::U16(reorder(v, shape)),
            ArrayData::Bool(v) => ArrayData::Bool(reorder(v, shape)),
        }
    }

    /// Borrowed values.
    pub fn view(&self) -> Values<'_> {
        match self {
            ArrayData::F32(v) => Values::F32(v),
            ArrayData::F64(v) => Values::F64(v),
            ArrayData::I64(v) => Values::I64(v),
            ArrayData::I32(v) => Values::I32(v),
            ArrayData::I16(v) => Values::I16(v),
            ArrayData::I8(v) => Values::I8(v),
            ArrayData::U8(v) => Values::U8(v),
            ArrayData::U16(v) => Values::U16(v),
            ArrayData::Bool(v) => Values::Bool(v),
        }
    }
}

/// One model input's values for a sample or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArray {
    /// The model input it feeds.
    pub name: String,
    /// Its dimensions, the batch axis first.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: ArrayData,
}

impl NamedArray {
    /// The array as one input of a run.
    pub fn input(&self) -> Input<'_> {
        Input { name: &self.name, shape: &self.shape, values: self.data.view() }
    }
}

/// Borrowed values of one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values<'a> {
    /// Preprocessed image values: fed as float32, or as uint8 levels to a model whose input is uint8 (raw
    /// pixels, normalised inside the graph).
    Pixels(&'a [f32]),
    /// float32.
    F32(&'a [f32]),
    /// float64.
    F64(&'a [f64]),
    /// int64.
    I64(&'a [i64]),
    /// int32.
    I32(&'a [i32]),
    /// int16.
    I16(&'a [i16]),
    /// int8.
    I8(&'a [i8]),
    /// uint8.
    U8(&'a [u8]),
    /// uint16.
    U16(&'a [u16]),
    /// bool.
    Bool(&'a [bool]),
}

impl Values<'_> {
    /// The element type's name (`float32` for pixels).
    pub fn dtype(&self) -> &'static str {
        match self {
            Values::Pixels(_) | Values::F32(_) => "float32",
            Values::F64(_) => "float64",
            Values::I64(_) => "int64",
            Values::I32(_) => "int32",
            Values::I16(_) => "int16",
            Values::I8(_) => "int8",
            Values::U8(_) => "uint8",
            Values::U16(_) => "uint16",
            Values::Bool(_) => "bool",
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::Pixels(v) | Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
            Values::I32(v) => v.len(),
            Values::I16(v) => v.len(),
            Values::I8(v) => v.len(),
            Values::U8(v) => v.len(),
            Values::U16(v) => v.len(),
            Values::Bool(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `start..end` as little-endian bytes (bool as one byte 0/1): what was fed, for hashing.
    pub fn le_bytes(&self, start: usize, end: usize) -> Vec<u8> {
        fn bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|&x| f(x)).collect()
        }
        match self {
            Values::Pixels(v) | Values::F32(v) => bytes(&v[start..end], f32::to_le_bytes),
            Values::F64(v) => bytes(&v[start..end], f64::to_le_bytes),
            Values::I64(v) => bytes(&v[start..end], i64::to_le_bytes),
            Values::I32(v) => bytes(&v[start..end], i32::to_le_bytes),
            Values::I16(v) => bytes(&v[start..end], i16::to_le_bytes),
            Values::I8(v) => bytes(&v[start..end], i8::to_le_bytes),
            Values::U8(v) => v[start..end].to_vec(),
            Values::U16(v) => bytes(&v[start..end], u16::to_le_bytes),
            Values::Bool(v) => v[start..end].iter().map(|&b| b as u8).collect(),
        }
    }

    /// The float32 values (of pixels too), if the values are float32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Values::Pixels(v) | Values::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// One input of a run: the model input's name, the batch's dimensions and its row-major values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Input<'a> {
    /// The model input.
    pub name: &'a str,
    /// Dimensions, the batch axis first.
    pub shape: &'a [usize],
    /// The values.
    pub values: Values<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_major_values_become_row_major() {
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        let f = ArrayData::I32(vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(f.to_row_major(&[2, 3]), ArrayData::I32(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(ArrayData::F32(vec![1.0, f32::NAN]).first_non_finite().map(|(i, _)| i), Some(1));
        assert_eq!(ArrayData::I64(vec![1]).first_non_finite(), None);
    }

    #[test]
    fn extend_keeps_the_type_and_refuses_another() {
        let mut a = ArrayData::I64(vec![1, 2]);
        assert!(a.extend(&ArrayData::I64(vec![3])));
        assert_eq!(a, ArrayData::I64(vec![1, 2, 3]));
        assert!(!a.extend(&ArrayData::I32(vec![4])));
        assert_eq!(a.len(), 3, "nothing appended on a type mismatch");
    }

    #[test]
    fn zeros_round_trip_every_dtype_name() {
        for d in ["float32", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"] {
            let z = ArrayData::zeros(d, 3).unwrap();
            assert_eq!((z.dtype(), z.len()), (d, 3));
        }
        assert!(ArrayData::zeros("complex64", 1).is_none());
    }

    #[test]
    fn le_bytes_cover_the_range_in_order() {
        assert_eq!(Values::I16(&[1, -2, 3]).le_bytes(1, 3), vec![0xfe, 0xff, 3, 0]);
        assert_eq!(Values::Bool(&[true, false]).le_bytes(0, 2), vec![1, 0]);
        assert_eq!(Values::Pixels(&[1.0]).le_bytes(0, 1), 1.0f32.to_le_bytes().to_vec());
    }

    #[test]
    fn pixels_are_float32_values() {
        let v = [1.0f32, 2.0];
        assert_eq!(Values::Pixels(&v).as_f32(), Some(&v[..]));
        assert_eq!(Values::Pixels(&v).dtype(), "float32");
        assert_eq!(Values::I64(&[1]).as_f32(), None);
    }
}
