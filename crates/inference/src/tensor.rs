use half::f16;

use crate::{DataType, InferError};

/// The elements of a tensor, flattened in row-major order, one variant per datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    /// Variable-length byte strings (ONNX `string` tensors carry UTF-8 text).
    Bytes(Vec<Vec<u8>>),
}

/// Runs `$body` with `$v` bound to the vector inside whichever variant `$data` is.
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Fp16($v) => $body,
            $crate::TensorData::Fp32($v) => $body,
            $crate::TensorData::Fp64($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to `f64`, for numeric datatypes; `None` for `BYTES` or out of range.
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        Some(match self {
            TensorData::Bool(v) => f64::from(u8::from(*v.get(i)?)),
            TensorData::Uint8(v) => f64::from(*v.get(i)?),
            TensorData::Uint16(v) => f64::from(*v.get(i)?),
            TensorData::Uint32(v) => f64::from(*v.get(i)?),
            TensorData::Uint64(v) => *v.get(i)? as f64,
            TensorData::Int8(v) => f64::from(*v.get(i)?),
            TensorData::Int16(v) => f64::from(*v.get(i)?),
            TensorData::Int32(v) => f64::from(*v.get(i)?),
            TensorData::Int64(v) => *v.get(i)? as f64,
            TensorData::Fp16(v) => f64::from(*v.get(i)?),
            TensorData::Fp32(v) => f64::from(*v.get(i)?),
            TensorData::Fp64(v) => *v.get(i)?,
            TensorData::Bytes(_) => return None,
        })
    }
}

/// A named, shaped tensor. Construct it with [`Tensor::new`], which checks that the number of
/// elements matches the shape, so every `Tensor` in the system is internally consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Result<Self, InferError> {
        let name = name.into();
        let expected = element_count(&shape).ok_or_else(|| InferError::InvalidInput {
            input: name.clone(),
            reason: format!("shape {shape:?} has too many elements"),
        })?;
        if expected != data.len() {
            return Err(InferError::InvalidInput {
                reason: format!(
                    "shape {shape:?} needs {expected} elements but {} were given",
                    data.len()
                ),
                input: name,
            });
        }
        Ok(Tensor { name, shape, data })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    pub fn into_parts(self) -> (String, Vec<usize>, TensorData) {
        (self.name, self.shape, self.data)
    }
}

/// Joins tensors of the same name, datatype and row shape along the first dimension: the rows
/// of several requests as one batch. `None` when they do not line up.
pub fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first()?;
    let row_shape = first.shape.get(1..)?;
    let mut rows = 0usize;
    for p in parts {
        if p.shape.get(1..)? != row_shape || p.datatype() != first.datatype() {
            return None;
        }
        rows += p.shape[0];
    }
    let total: usize = parts.iter().map(|p| p.data.len()).sum();
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(total);
            for p in parts {
                if let TensorData::$variant(v) = &p.data {
                    out.extend_from_slice(v);
                }
            }
            TensorData::$variant(out)
        }};
    }
    let data = match &first.data {
        TensorData::Bool(_) => join!(Bool),
        TensorData::Uint8(_) => join!(Uint8),
        TensorData::Uint16(_) => join!(Uint16),
        TensorData::Uint32(_) => join!(Uint32),
        TensorData::Uint64(_) => join!(Uint64),
        TensorData::Int8(_) => join!(Int8),
        TensorData::Int16(_) => join!(Int16),
        TensorData::Int32(_) => join!(Int32),
        TensorData::Int64(_) => join!(Int64),
        TensorData::Fp16(_) => join!(Fp16),
        TensorData::Fp32(_) => join!(Fp32),
        TensorData::Fp64(_) => join!(Fp64),
        TensorData::Bytes(_) => join!(Bytes),
    };
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Some(Tensor { name: first.name.clone(), shape, data })
}

impl Tensor {
    /// Splits along the first dimension into pieces of `rows[i]` rows (which must add up to the
    /// first dimension): one batch's output back to its requests.
    pub fn split_rows(self, rows: &[usize]) -> Result<Vec<Tensor>, InferError> {
        let total: usize = rows.iter().sum();
        if self.shape.first() != Some(&total) {
            return Err(InferError::Runtime(format!(
                "output '{}' has shape {:?}, not {total} rows for a batch of {total}: the model does not batch this output by rows; turn dynamic batching off for it",
                self.name, self.shape
            )));
        }
        let per_row = self.shape[1..].iter().product::<usize>();
        let Tensor { name, shape, data } = self;
        let mut out = Vec::with_capacity(rows.len());
        let mut start = 0;
        with_tensor_data!(data, v => {
            for &r in rows {
                let mut piece_shape = shape.clone();
                piece_shape[0] = r;
                let end = start + r * per_row;
                out.push(Tensor { name: name.clone(), shape: piece_shape, data: slice_as(&v[start..end]) });
                start = end;
            }
        });
        Ok(out)
    }
}

/// Rebuilds the variant of `TensorData` a slice came from.
fn slice_as<T: Clone + IntoData>(v: &[T]) -> TensorData {
    T::into_data(v.to_vec())
}

trait IntoData: Sized {
    fn into_data(v: Vec<Self>) -> TensorData;
}

macro_rules! into_data {
    ($($t:ty => $variant:ident),*) => {$(
        impl IntoData for $t {
            fn into_data(v: Vec<Self>) -> TensorData {
                TensorData::$variant(v)
            }
        }
    )*};
}

into_data!(bool => Bool, u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8, i16 => Int16,
    i32 => Int32, i64 => Int64, f16 => Fp16, f32 => Fp32, f64 => Fp64, Vec<u8> => Bytes);

/// The product of the dimensions, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_element_count() {
        assert!(Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 6])).is_ok());
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input 'x': shape [2, 3] needs 6 elements but 5 were given"
        );
        let err = Tensor::new("x", vec![usize::MAX, 2], TensorData::Fp32(vec![])).unwrap_err();
        assert!(err.to_string().contains("too many elements"), "{err}");
    }

    #[test]
    fn scalar_has_one_element() {
        assert!(Tensor::new("s", vec![], TensorData::Int64(vec![7])).is_ok());
    }

    #[test]
    fn concatenates_and_splits_rows() {
        let a = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![1.0, 2.0])).unwrap();
        let b = Tensor::new("x", vec![2, 2], TensorData::Fp32(vec![3.0, 4.0, 5.0, 6.0])).unwrap();
        let joined = concat_rows(&[&a, &b]).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
        let parts = joined.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a.clone(), b]);
        let other = Tensor::new("x", vec![1, 3], TensorData::Fp32(vec![0.0; 3])).unwrap();
        assert!(concat_rows(&[&a, &other]).is_none());
        let err = a.split_rows(&[1, 1]).unwrap_err().to_string();
        assert!(err.contains("not 2 rows"), "{err}");
    }
}
