//! `binary_tensor`: the binary tensor extension and the raw tensor codec under it.
//!
//! The first byte picks what the rest is:
//! - `0`, then the JSON length as two little-endian bytes (the `inference-header-content-length`
//!   header), then a body: JSON followed by the inputs' raw bytes, decoded as the REST server does.
//! - anything else: a datatype (that byte, modulo the 13 datatypes), a rank (the next byte,
//!   modulo 5), one byte per dimension (`255` stands for a dimension of `u32::MAX`, to reach the
//!   size checks), then the raw bytes of one tensor.
//!
//! Whatever decodes must encode back to the same bytes.

use modelship_inference::DataType;
use modelship_protocol::{raw, v2};

pub fn run(data: &[u8]) {
    match data {
        [0, a, b, body @ ..] => request(usize::from(u16::from_le_bytes([*a, *b])), body),
        [datatype, rank, rest @ ..] if *datatype != 0 => tensor(*datatype, *rank, rest),
        _ => {}
    }
}

fn request(json_length: usize, body: &[u8]) {
    let Ok(decoded) = v2::decode_request(body, Some(json_length)) else { return };
    // Compared as bytes: a NaN in the input is a value that is not equal to itself.
    for input in &decoded.request.inputs {
        let bytes = raw::encode(input.data());
        let back = raw::decode("input", input.datatype(), input.shape(), &bytes).expect("raw bytes of a decoded input decode again");
        assert_eq!(raw::encode(&back), bytes, "input '{}' survives the raw codec", input.name());
    }
}

fn tensor(datatype: u8, rank: u8, rest: &[u8]) {
    let datatype = DataType::ALL[usize::from(datatype) % DataType::ALL.len()];
    let rank = usize::from(rank % 5).min(rest.len());
    let (dims, bytes) = rest.split_at(rank);
    let shape: Vec<usize> = dims.iter().map(|&d| if d == 255 { u32::MAX as usize } else { usize::from(d) }).collect();
    if let Ok(data) = raw::decode("input 'x'", datatype, &shape, bytes) {
        assert_eq!(raw::encode(&data).as_ref(), bytes, "{datatype} {shape:?} encodes back to its bytes");
    }
    let _ = raw::tensor("x", datatype, shape, bytes);
}
