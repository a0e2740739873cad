//! What decoding a `ModelInferRequest` would cost in memory, read from its wire bytes before it
//! is decoded. Protobuf packs small things tightly: an empty input tensor is 2 bytes on the wire
//! and several hundred once decoded, so a 16 MiB message of them would take gigabytes. The gRPC
//! codec refuses a message whose decoded size would be out of proportion to its bytes, and one
//! listing more inputs or outputs than a REST body may, before prost allocates anything.
//!
//! The walk uses prost's own wire primitives; the field numbers are `inference.proto`'s.

use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};

use crate::bounded::MAX_TENSORS;

/// A decoded request may cost at most this many times its wire size, plus [`SLACK`]: packed
/// INT64 data of one-byte values decodes to 8 bytes an element, the worst a real tensor does.
pub const MAX_FACTOR: usize = 8;
/// Fixed headroom in the bound, for small messages.
pub const SLACK: usize = 64 << 20;

// Rough decoded sizes of the message types, in bytes (their struct, maps' entries).
const INPUT: usize = 448;
const OUTPUT: usize = 96;
const PARAMETER: usize = 96;
const VEC: usize = 24;

/// Refuses `message`, the bytes of a `ModelInferRequest`, when decoding it would cost more than
/// [`MAX_FACTOR`] times its size plus [`SLACK`], or when it lists more than [`MAX_TENSORS`]
/// inputs, outputs or raw contents. Says which.
pub fn check_infer_request(message: &[u8]) -> Result<(), String> {
    let (mut inputs, mut outputs, mut raw) = (0usize, 0usize, 0usize);
    let cost = sum(message, |tag, field| {
        Ok(match (tag, field) {
            (4, Field::Bytes(b)) => PARAMETER + b.len(),
            (5, Field::Bytes(b)) => {
                inputs += 1;
                INPUT + input_cost(b)?
            }
            (6, Field::Bytes(b)) => {
                outputs += 1;
                OUTPUT + output_cost(b)?
            }
            (7, Field::Bytes(b)) => {
                raw += 1;
                VEC + b.len()
            }
            (_, field) => field.len(),
        })
    })?;
    for (what, n) in [("inputs", inputs), ("outputs", outputs), ("raw_input_contents", raw)] {
        if n > MAX_TENSORS {
            return Err(format!("a request lists at most {MAX_TENSORS} {what}, not {n}"));
        }
    }
    let bound = MAX_FACTOR * message.len() + SLACK;
    if cost > bound {
        return Err(format!(
            "this {} byte message would take about {} MB to decode (the limit is {MAX_FACTOR} times its size plus 64 MB): it holds too many small elements",
            message.len(),
            cost >> 20
        ));
    }
    Ok(())
}

fn input_cost(bytes: &[u8]) -> Result<usize, String> {
    sum(bytes, |tag, field| {
        Ok(match (tag, field) {
            // shape: packed int64, at most one element a byte.
            (3, Field::Bytes(b)) => 8 * b.len(),
            (3, _) => 8,
            (4, Field::Bytes(b)) => PARAMETER + b.len(),
            (5, Field::Bytes(b)) => contents_cost(b)?,
            (_, field) => field.len(),
        })
    })
}

fn output_cost(bytes: &[u8]) -> Result<usize, String> {
    sum(bytes, |tag, field| {
        Ok(match (tag, field) {
            (2, Field::Bytes(b)) => PARAMETER + b.len(),
            (_, field) => field.len(),
        })
    })
}

/// `InferTensorContents`: each repeated field packed (a run of values) or not (one value).
fn contents_cost(bytes: &[u8]) -> Result<usize, String> {
    sum(bytes, |tag, field| {
        // Bytes per element once decoded: bool, int32, int64, uint32, uint64, fp32, fp64.
        let element = match tag {
            1 => 1,
            2 | 4 | 6 => 4,
            3 | 5 | 7 => 8,
            _ => 0,
        };
        Ok(match (tag, field) {
            (8, Field::Bytes(b)) => VEC + b.len(),
            // Packed: at most one element a byte (fixed-width ones take 4 or 8 bytes each).
            (1..=7, Field::Bytes(b)) => element * b.len(),
            (1..=7, _) => element,
            (_, field) => field.len(),
        })
    })
}

/// One field's value as the wire carries it.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint,
    Fixed(usize),
    Bytes(&'a [u8]),
}

impl Field<'_> {
    fn len(self) -> usize {
        match self {
            Field::Varint => 8,
            Field::Fixed(n) => n,
            Field::Bytes(b) => b.len(),
        }
    }
}

/// The sum of `cost` over every field of the message in `bytes` (tag, value), without decoding.
fn sum<'a>(mut bytes: &'a [u8], mut cost: impl FnMut(u32, Field<'a>) -> Result<usize, String>) -> Result<usize, String> {
    let mut total = 0usize;
    let malformed = |e: prost::DecodeError| format!("the message is not valid protobuf: {e}");
    while bytes.has_remaining() {
        let (tag, wire) = decode_key(&mut bytes).map_err(malformed)?;
        let field = match wire {
            WireType::Varint => {
                decode_varint(&mut bytes).map_err(malformed)?;
                Field::Varint
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                if bytes.len() < n {
                    return Err("the message is not valid protobuf: a fixed-width field runs past its end".to_owned());
                }
                bytes.advance(n);
                Field::Fixed(n)
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut bytes).map_err(malformed)?).unwrap_or(usize::MAX);
                if len > bytes.len() {
                    return Err("the message is not valid protobuf: a field's length runs past its end".to_owned());
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                Field::Bytes(value)
            }
            WireType::StartGroup | WireType::EndGroup => return Err("the message is not valid protobuf: groups are not used by inference.proto".to_owned()),
        };
        total = total.saturating_add(cost(tag, field)?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::grpc::pb;

    fn encoded(r: &pb::ModelInferRequest) -> Vec<u8> {
        r.encode_to_vec()
    }

    fn input(name: &str) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor { name: name.to_owned(), datatype: "FP32".to_owned(), shape: vec![1, 3], ..Default::default() }
    }

    #[test]
    fn ordinary_requests_pass_and_amplifying_ones_are_refused() {
        let one = pb::ModelInferRequest {
            model_name: "fraud".to_owned(),
            inputs: vec![input("x")],
            raw_input_contents: vec![vec![0u8; 12].into()],
            ..Default::default()
        };
        let mut big_int64 = input("ids");
        big_int64.contents = Some(pb::InferTensorContents { int64_contents: vec![1; 1 << 20], ..Default::default() });
        let many_empty = pb::ModelInferRequest { inputs: vec![Default::default(); 200_000], ..Default::default() };
        // 12 times its 20 MB as empty strings: past 8 times plus 64 MB.
        let many_strings = pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                contents: Some(pb::InferTensorContents { bytes_contents: vec![Default::default(); 10_000_000], ..Default::default() }),
                ..input("s")
            }],
            ..Default::default()
        };
        let too_many = pb::ModelInferRequest { inputs: (0..MAX_TENSORS + 1).map(|i| input(&format!("i{i}"))).collect(), ..Default::default() };
        // (what, request, refused with this fragment, or passes)
        let cases: Vec<(&str, pb::ModelInferRequest, Option<&str>)> = vec![
            ("one input with raw contents", one, None),
            ("a million INT64 of one byte each", pb::ModelInferRequest { inputs: vec![big_int64], ..Default::default() }, None),
            ("200 000 empty inputs", many_empty, Some("at most 4096 inputs")),
            ("10 million empty strings", many_strings, Some("too many small elements")),
            ("4097 inputs", too_many, Some("at most 4096 inputs")),
        ];
        for (what, request, refused) in cases {
            match (check_infer_request(&encoded(&request)), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(fragment)) => assert!(e.contains(fragment), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, wanted {want:?}"),
            }
        }
        assert!(check_infer_request(&[0x2a, 0x7f]).unwrap_err().contains("not valid protobuf"));
    }
}
