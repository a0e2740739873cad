//! Tensors as raw bytes: the layout of Triton's binary tensor extension (REST) and of
//! `raw_input_contents` / `raw_output_contents` (gRPC). Fixed-size elements are little-endian
//! and packed in row-major order; each `BYTES` element is a 4-byte little-endian length followed
//! by that many bytes.
//!
//! Fixed-size datatypes move as one bulk copy into an aligned buffer (the runtime then reads that
//! buffer in place): no per-element parsing. Only `BOOL` (each byte must be 0 or 1) and `BYTES`
//! are walked element by element.

use std::borrow::Cow;

use half::f16;
use modelship_inference::{DataType, Tensor, TensorData, element_count};

use crate::DecodeError;

/// Decodes `bytes` as `shape` elements of `datatype`. `what` names the tensor in errors.
pub fn decode(what: &str, datatype: DataType, shape: &[usize], bytes: &[u8]) -> Result<TensorData, DecodeError> {
    let count = element_count(shape).ok_or_else(|| DecodeError(format!("{what}: shape {shape:?} has too many elements")))?;
    if let Some(size) = datatype.element_size() {
        let want = count.checked_mul(size).ok_or_else(|| DecodeError(format!("{what}: shape {shape:?} is too large")))?;
        if bytes.len() != want {
            return Err(DecodeError(format!(
                "{what}: shape {shape:?} of {datatype} needs {want} bytes of raw data but {} were given",
                bytes.len()
            )));
        }
    }
    fn copy<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
        bytemuck::pod_collect_to_vec(bytes)
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(DecodeError(format!("{what}: BOOL element {i} is byte {other}; only 0 and 1 are booleans"))),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Uint16 => TensorData::Uint16(copy(bytes)),
        DataType::Uint32 => TensorData::Uint32(copy(bytes)),
        DataType::Uint64 => TensorData::Uint64(copy(bytes)),
        DataType::Int8 => TensorData::Int8(copy(bytes)),
        DataType::Int16 => TensorData::Int16(copy(bytes)),
        DataType::Int32 => TensorData::Int32(copy(bytes)),
        DataType::Int64 => TensorData::Int64(copy(bytes)),
        DataType::Fp16 => TensorData::Fp16(copy::<f16>(bytes)),
        DataType::Fp32 => TensorData::Fp32(copy(bytes)),
        DataType::Fp64 => TensorData::Fp64(copy(bytes)),
        DataType::Bytes => TensorData::Bytes(decode_bytes(what, count, bytes)?),
    })
}

fn decode_bytes(what: &str, count: usize, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    // Each element costs at least its 4-byte length: a count past that is a lie, not an allocation.
    if count > bytes.len() / 4 {
        return Err(DecodeError(format!(
            "{what}: {count} BYTES elements need at least {} bytes of raw data but {} were given",
            count.saturating_mul(4),
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(DecodeError(format!("{what}: raw data ends inside the length of BYTES element {i}")));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError(format!(
                "{what}: BYTES element {i} declares {len} bytes but only {} remain",
                rest.len()
            )));
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    if !bytes.is_empty() {
        return Err(DecodeError(format!("{what}: {} bytes of raw data are left after {count} BYTES elements", bytes.len())));
    }
    Ok(out)
}

/// Decodes a whole tensor from raw bytes.
pub fn tensor(name: &str, datatype: DataType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, DecodeError> {
    let data = decode(&format!("input '{name}'"), datatype, &shape, bytes)?;
    Tensor::new(name, shape, data).map_err(|e| DecodeError(e.to_string()))
}

/// The raw bytes of `data`: borrowed as they are for fixed-size datatypes, built for `BOOL` and
/// `BYTES`.
pub fn encode(data: &TensorData) -> Cow<'_, [u8]> {
    match data {
        TensorData::Bool(v) => Cow::Owned(v.iter().map(|&b| u8::from(b)).collect()),
        TensorData::Uint8(v) => Cow::Borrowed(v),
        TensorData::Uint16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Uint32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Uint64(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Int8(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Int16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Int32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Int64(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Fp16(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Fp32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Fp64(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        TensorData::Bytes(v) => {
            let mut out = Vec::with_capacity(v.iter().map(|b| b.len() + 4).sum());
            for b in v {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
            Cow::Owned(out)
        }
    }
}

// Raw layouts are little-endian; the bulk copies above are only correct on little-endian hosts.
const _: () = assert!(cfg!(target_endian = "little"), "modelship's raw tensor codec assumes a little-endian host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_datatype() {
        let cases = vec![
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![1, 255]),
            TensorData::Uint16(vec![1, 65535]),
            TensorData::Uint32(vec![1, u32::MAX]),
            TensorData::Uint64(vec![1, u64::MAX]),
            TensorData::Int8(vec![-1, 127]),
            TensorData::Int16(vec![-1, 300]),
            TensorData::Int32(vec![-1, 70000]),
            TensorData::Int64(vec![-1, i64::MIN]),
            TensorData::Fp16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)]),
            TensorData::Fp32(vec![0.25, -1e30]),
            TensorData::Fp64(vec![0.125, 1e300]),
            TensorData::Bytes(vec![b"ab".to_vec(), vec![]]),
        ];
        for data in cases {
            let bytes = encode(&data).into_owned();
            assert_eq!(decode("x", data.datatype(), &[2], &bytes).unwrap(), data);
        }
        assert_eq!(encode(&TensorData::Fp32(vec![1.0])).as_ref(), 1.0f32.to_le_bytes());
        assert_eq!(encode(&TensorData::Bytes(vec![b"hi".to_vec()])).as_ref(), b"\x02\0\0\0hi");
    }

    #[test]
    fn names_each_problem() {
        let err = |dt, shape: &[usize], bytes: &[u8]| decode("input 'x'", dt, shape, bytes).unwrap_err().to_string();
        assert_eq!(err(DataType::Fp32, &[2], &[0; 7]), "input 'x': shape [2] of FP32 needs 8 bytes of raw data but 7 were given");
        assert_eq!(err(DataType::Bool, &[2], &[1, 2]), "input 'x': BOOL element 1 is byte 2; only 0 and 1 are booleans");
        assert_eq!(err(DataType::Bytes, &[1], b"\x05\0\0\0hi"), "input 'x': BYTES element 0 declares 5 bytes but only 2 remain");
        assert_eq!(err(DataType::Bytes, &[1], b"\x01\0\0\0hi"), "input 'x': 1 bytes of raw data are left after 1 BYTES elements");
        assert_eq!(
            err(DataType::Bytes, &[1_000_000_000], b"\0\0\0\0"),
            "input 'x': 1000000000 BYTES elements need at least 4000000000 bytes of raw data but 4 were given"
        );
        assert!(err(DataType::Fp64, &[usize::MAX, 2], &[]).contains("too many elements"));
    }
}
