//! Between modelship tensors and ONNX Runtime values.

use half::f16;
use modelship_inference::{DataType, InferError, Tensor, TensorData};
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef};

/// The OIP datatype of an ONNX element type; `None` for types modelship does not serve
/// (bfloat16, complex, 4-bit and 8-bit floats).
pub fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn runtime_error(e: ort::Error) -> InferError {
    InferError::Runtime(e.to_string())
}

/// A runtime value over the tensor's own memory (no copy), or a converted copy for strings.
pub fn input_value(tensor: &Tensor) -> Result<SessionInputValue<'_>, InferError> {
    let shape = tensor.shape();
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, $v.as_slice())).map(SessionInputValue::from).map_err(runtime_error)
        };
    }
    match tensor.data() {
        TensorData::Bool(v) => view!(v),
        TensorData::Uint8(v) => view!(v),
        TensorData::Uint16(v) => view!(v),
        TensorData::Uint32(v) => view!(v),
        TensorData::Uint64(v) => view!(v),
        TensorData::Int8(v) => view!(v),
        TensorData::Int16(v) => view!(v),
        TensorData::Int32(v) => view!(v),
        TensorData::Int64(v) => view!(v),
        TensorData::Fp16(v) => view!(v),
        TensorData::Fp32(v) => view!(v),
        TensorData::Fp64(v) => view!(v),
        TensorData::Bytes(v) => {
            // ONNX string tensors hold UTF-8 text.
            let strings = v
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    // The runtime takes strings as C strings: a NUL would end one early (and
                    // fails inside the runtime), so it is the client's error, said here.
                    if let Some(at) = b.iter().position(|&c| c == 0) {
                        return Err(InferError::InvalidInput {
                            input: tensor.name().to_owned(),
                            reason: format!("element {i} holds a NUL byte (at {at}), which ONNX Runtime's string tensors cannot carry"),
                        });
                    }
                    String::from_utf8(b.clone()).map_err(|_| InferError::InvalidInput {
                        input: tensor.name().to_owned(),
                        reason: format!("element {i} is not valid UTF-8, which ONNX string tensors require"),
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                .map(SessionInputValue::from)
                .map_err(runtime_error)
        }
    }
}

/// Copies a runtime output into a modelship tensor of the expected datatype.
pub fn output_tensor(name: &str, datatype: DataType, value: &DynValue) -> Result<Tensor, InferError> {
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(runtime_error)?;
            (dims(shape), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match datatype {
        DataType::Bool => extract!(bool, Bool),
        DataType::Uint8 => extract!(u8, Uint8),
        DataType::Uint16 => extract!(u16, Uint16),
        DataType::Uint32 => extract!(u32, Uint32),
        DataType::Uint64 => extract!(u64, Uint64),
        DataType::Int8 => extract!(i8, Int8),
        DataType::Int16 => extract!(i16, Int16),
        DataType::Int32 => extract!(i32, Int32),
        DataType::Int64 => extract!(i64, Int64),
        DataType::Fp16 => extract!(f16, Fp16),
        DataType::Fp32 => extract!(f32, Fp32),
        DataType::Fp64 => extract!(f64, Fp64),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(runtime_error)?;
            (dims(shape), TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()))
        }
    };
    Tensor::new(name, shape, data).map_err(|e| InferError::Runtime(format!("output '{name}': {e}")))
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
}
