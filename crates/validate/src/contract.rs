//! A model's API against a reference version's: what clients of the reference would see.
//!
//! Inputs and outputs are compared by name, datatype and shape, as the server serves them (the
//! signature ONNX Runtime reports, and the output `/v1/predict` answers from). A change is
//! breaking when a request or a client's reading of an answer that worked against the reference
//! can fail against the candidate:
//!
//! - an input removed, renamed or added (every ONNX input is required, so clients do not send a
//!   new one); an output removed or renamed;
//! - any datatype change: V2 requests name their datatype and the server accepts only the
//!   model's (`Signature::prepare`), and binary outputs are decoded by theirs; a narrowed type
//!   (FP64 → FP32, INT64 → INT32) also loses range or precision;
//! - a changed rank, or a fixed dimension that changed; an input dimension that became fixed
//!   (it accepted any size before); an output dimension that became dynamic;
//! - `/v1/predict` answering from another output.
//!
//! Not breaking: a new output (V2 clients that name their outputs do not get it, the rest get one
//! more entry), an input dimension that became dynamic (it accepts more), an output dimension
//! that became fixed (it promises more).

use modelship_inference::{DataType, Signature, TensorSpec};
use serde::{Deserialize, Serialize};

/// What clients depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contract {
    pub signature: Signature,
    /// The output `/v1/predict` answers from, when the model has one it can.
    pub prediction: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Input,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Removed,
    Added,
    Renamed,
    Datatype,
    Shape,
    /// `/v1/predict` answers from another output (or none).
    Prediction,
}

/// One difference, breaking or not, with a sentence saying what clients see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub side: Side,
    /// The tensor's name in the reference (the candidate's for an added one).
    pub name: String,
    pub kind: ChangeKind,
    pub breaking: bool,
    pub detail: String,
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Input => "input",
        Side::Output => "output",
    }
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| if *d < 0 { "N".to_owned() } else { d.to_string() }).collect();
    format!("[{}]", dims.join(", "))
}

/// Same kind of number with fewer bits, or a float turned integer: values lose range or precision.
fn narrows(from: DataType, to: DataType) -> bool {
    use DataType::*;
    let rank = |t: DataType| match t {
        Int8 | Uint8 => Some((0, 1)),
        Int16 | Uint16 => Some((0, 2)),
        Int32 | Uint32 => Some((0, 4)),
        Int64 | Uint64 => Some((0, 8)),
        Fp16 => Some((1, 2)),
        Fp32 => Some((1, 4)),
        Fp64 => Some((1, 8)),
        Bool | Bytes => None,
    };
    let signed = |t: DataType| matches!(t, Int8 | Int16 | Int32 | Int64);
    match (rank(from), rank(to)) {
        (Some((1, _)), Some((0, _))) => true,
        (Some((kf, bf)), Some((kt, bt))) if kf == kt => bt < bf && (kf == 1 || signed(from) == signed(to)),
        _ => false,
    }
}

fn datatype_change(side: Side, old: &TensorSpec, new: &TensorSpec) -> Option<Change> {
    if old.datatype == new.datatype {
        return None;
    }
    let (from, to) = (old.datatype, new.datatype);
    let why = if narrows(from, to) {
        format!("narrowed {from} -> {to}: values lose range or precision")
    } else {
        match side {
            Side::Input => format!("changed {from} -> {to}: V2 requests name their datatype and the server accepts only the model's, so clients sending {from} are refused"),
            Side::Output => format!("changed {from} -> {to}: clients decoding the answer as {from} misread it"),
        }
    };
    Some(Change { side, name: old.name.clone(), kind: ChangeKind::Datatype, breaking: true, detail: format!("{} '{}': datatype {why}", side_name(side), old.name) })
}

fn shape_change(side: Side, old: &TensorSpec, new: &TensorSpec) -> Option<Change> {
    if old.shape == new.shape {
        return None;
    }
    let (from, to) = (shape_text(&old.shape), shape_text(&new.shape));
    let name = &old.name;
    let change = |breaking: bool, why: String| Change {
        side,
        name: name.clone(),
        kind: ChangeKind::Shape,
        breaking,
        detail: format!("{} '{name}': shape {from} -> {to}: {why}", side_name(side)),
    };
    if old.shape.len() != new.shape.len() {
        return Some(change(true, format!("rank {} -> {}", old.shape.len(), new.shape.len())));
    }
    let mut breaking = Vec::new();
    let mut compatible = Vec::new();
    for (i, (&a, &b)) in old.shape.iter().zip(&new.shape).enumerate() {
        match (a < 0, b < 0, side) {
            _ if a == b => {}
            (false, false, _) => breaking.push(format!("dimension {i} is {b}, was {a}")),
            (true, false, Side::Input) => breaking.push(format!("dimension {i} now accepts only {b}")),
            (false, true, Side::Input) => compatible.push(format!("dimension {i} now accepts any size")),
            (false, true, Side::Output) => breaking.push(format!("dimension {i} is no longer always {a}")),
            (true, false, Side::Output) => compatible.push(format!("dimension {i} is now always {b}")),
            (true, true, _) => {}
        }
    }
    if breaking.is_empty() { Some(change(false, compatible.join(", "))) } else { Some(change(true, breaking.join(", "))) }
}

/// Tensors of one side: removed and added ones paired into renames when their datatype and shape
/// agree, then each common one compared.
fn compare_side(side: Side, old: &[TensorSpec], new: &[TensorSpec]) -> Vec<Change> {
    let mut changes = Vec::new();
    let removed: Vec<&TensorSpec> = old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)).collect();
    let mut added: Vec<&TensorSpec> = new.iter().filter(|n| !old.iter().any(|o| o.name == n.name)).collect();
    let what = side_name(side);
    for gone in removed {
        if let Some(i) = added.iter().position(|a| a.datatype == gone.datatype && a.shape == gone.shape) {
            let renamed = added.remove(i);
            changes.push(Change {
                side,
                name: gone.name.clone(),
                kind: ChangeKind::Renamed,
                breaking: true,
                detail: format!("{what} '{}' renamed '{}' (same {} {}): clients still use the old name", gone.name, renamed.name, gone.datatype, shape_text(&gone.shape)),
            });
        } else {
            changes.push(Change { side, name: gone.name.clone(), kind: ChangeKind::Removed, breaking: true, detail: format!("{what} '{}' removed", gone.name) });
        }
    }
    for new_one in added {
        let (breaking, why) = match side {
            Side::Input => (true, "a new required input: clients of the reference do not send it"),
            Side::Output => (false, "a new output: clients that name their outputs do not get it"),
        };
        changes.push(Change {
            side,
            name: new_one.name.clone(),
            kind: ChangeKind::Added,
            breaking,
            detail: format!("{what} '{}' ({} {}) added: {why}", new_one.name, new_one.datatype, shape_text(&new_one.shape)),
        });
    }
    for o in old {
        if let Some(n) = new.iter().find(|n| n.name == o.name) {
            changes.extend(datatype_change(side, o, n));
            changes.extend(shape_change(side, o, n));
        }
    }
    changes
}

/// Every difference between the reference's contract and the candidate's, inputs first.
pub fn compare(reference: &Contract, candidate: &Contract) -> Vec<Change> {
    let mut changes = compare_side(Side::Input, &reference.signature.inputs, &candidate.signature.inputs);
    changes.extend(compare_side(Side::Output, &reference.signature.outputs, &candidate.signature.outputs));
    if reference.prediction != candidate.prediction {
        let name = |p: &Option<String>| p.as_ref().map_or_else(|| "no output".to_owned(), |p| format!("'{p}'"));
        changes.push(Change {
            side: Side::Output,
            name: reference.prediction.clone().unwrap_or_default(),
            kind: ChangeKind::Prediction,
            breaking: true,
            detail: format!("/v1/predict would answer from {} instead of {}", name(&candidate.prediction), name(&reference.prediction)),
        });
    }
    changes
}

/// Whether `candidate` is a new major version over `reference` (`2.0.0` over `1.4.2`, `v3` over
/// `v2`): the leading numbers of both, an optional `v` first. `None` when either has none.
pub fn new_major(reference: &str, candidate: &str) -> Option<bool> {
    let major = |v: &str| -> Option<u64> {
        let v = v.trim().trim_start_matches(['v', 'V']);
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some(major(candidate)? > major(reference)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, datatype, shape.to_vec())
    }

    fn fraud() -> Contract {
        Contract {
            signature: Signature {
                inputs: vec![spec("input", DataType::Fp32, &[-1, 30])],
                outputs: vec![spec("label", DataType::Int64, &[-1]), spec("probabilities", DataType::Fp32, &[-1, 2])],
            },
            prediction: Some("probabilities".to_owned()),
        }
    }

    /// What each change of the fraud model's contract reads as, and whether it breaks.
    #[test]
    fn each_change_and_whether_it_breaks() {
        type Edit = fn(&mut Contract);
        type Case = (&'static str, Edit, Vec<(bool, &'static str)>);
        let cases: Vec<Case> = vec![
            ("identical", |_| {}, vec![]),
            ("renamed input", |c| c.signature.inputs[0].name = "features".into(), vec![(true, "input 'input' renamed 'features' (same FP32 [N, 30])")]),
            ("removed input", |c| c.signature.inputs[0] = spec("other", DataType::Int64, &[-1]), vec![
                (true, "input 'input' removed"),
                (true, "input 'other' (INT64 [N]) added: a new required input"),
            ]),
            ("narrowed input", |c| c.signature.inputs[0].datatype = DataType::Fp16, vec![(true, "input 'input': datatype narrowed FP32 -> FP16")]),
            ("widened input", |c| c.signature.inputs[0].datatype = DataType::Fp64, vec![(true, "datatype changed FP32 -> FP64: V2 requests name their datatype")]),
            ("fixed to dynamic input", |c| c.signature.inputs[0].shape = vec![-1, -1], vec![(false, "shape [N, 30] -> [N, N]: dimension 1 now accepts any size")]),
            ("dynamic to fixed input", |c| c.signature.inputs[0].shape = vec![1, 30], vec![(true, "dimension 0 now accepts only 1")]),
            ("wider input", |c| c.signature.inputs[0].shape = vec![-1, 31], vec![(true, "shape [N, 30] -> [N, 31]: dimension 1 is 31, was 30")]),
            ("rank", |c| c.signature.inputs[0].shape = vec![-1, 30, 1], vec![(true, "rank 2 -> 3")]),
            ("new output", |c| c.signature.outputs.push(spec("explanation", DataType::Fp32, &[-1, 30])), vec![(false, "output 'explanation' (FP32 [N, 30]) added")]),
            ("removed output", |c| { c.signature.outputs.remove(0); }, vec![(true, "output 'label' removed")]),
            ("output narrowed", |c| c.signature.outputs[0].datatype = DataType::Int32, vec![(true, "output 'label': datatype narrowed INT64 -> INT32")]),
            ("output sign", |c| c.signature.outputs[0].datatype = DataType::Uint64, vec![(true, "changed INT64 -> UINT64: clients decoding the answer as INT64")]),
            ("output dynamic", |c| c.signature.outputs[1].shape = vec![-1, -1], vec![(true, "dimension 1 is no longer always 2")]),
            ("output fixed", |c| c.signature.outputs[0].shape = vec![1], vec![(false, "dimension 0 is now always 1")]),
            ("prediction output", |c| {
                c.signature.outputs[1].name = "scores".into();
                c.prediction = Some("scores".into());
            }, vec![
                (true, "output 'probabilities' renamed 'scores'"),
                (true, "/v1/predict would answer from 'scores' instead of 'probabilities'"),
            ]),
        ];
        for (case, edit, want) in cases {
            let mut candidate = fraud();
            edit(&mut candidate);
            let changes = compare(&fraud(), &candidate);
            assert_eq!(changes.len(), want.len(), "{case}: {changes:#?}");
            for (change, (breaking, text)) in changes.iter().zip(want) {
                assert!(change.breaking == breaking && change.detail.contains(text), "{case}: {change:#?} (want {breaking} {text})");
            }
        }
    }

    #[test]
    fn narrowing_is_fewer_bits_of_the_same_kind_or_float_to_integer() {
        use DataType::*;
        for (from, to, want) in [(Fp64, Fp32, true), (Fp32, Fp64, false), (Int64, Int32, true), (Uint16, Uint8, true), (Int64, Uint32, false), (Fp32, Int64, true), (Int32, Fp64, false), (Bool, Uint8, false)] {
            assert_eq!(narrows(from, to), want, "{from} -> {to}");
        }
    }

    #[test]
    fn majors_by_their_leading_number() {
        for (reference, candidate, want) in [("1.4.2", "2.0.0", Some(true)), ("1.4.2", "1.5.0", Some(false)), ("v2", "v3", Some(true)), ("2", "1", Some(false)), ("2024-01", "2025-01", Some(true)), ("main", "2.0", None)] {
            assert_eq!(new_major(reference, candidate), want, "{reference} -> {candidate}");
        }
    }
}
