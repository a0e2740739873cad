//! The row-independence probe behind joining the requests already waiting (see the pool's
//! documentation): run at load, once per pool, on the first worker's session.

use modelship_inference::{DataType, PreparedRequest, Session, Tensor, TensorData};

use super::run_guarded;

/// The probe behind joining waiting requests: two different rows, run apart and then together,
/// must give each row the same outputs (floating-point values within a relative 1e-4, since a
/// runtime may take another kernel for more rows). `Err` says why the model is not joined: no
/// batch dimension, a run that failed on the probe's values, or rows that changed each other.
/// A probe, not a proof: a model whose rows interact only for some values can pass it; such a
/// model is served with `Opportunistic::Off`.
pub fn rows_are_independent(session: &mut dyn Session) -> Result<(), String> {
    if !modelship_protocol::model_config::batches_rows(session.info()) {
        return Err("the model has no dynamic first dimension on every input and output".to_owned());
    }
    let signature = session.info().signature.clone();
    let row = |which: usize| -> Result<PreparedRequest, String> {
        let inputs = signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = std::iter::once(1).chain(spec.shape[1..].iter().map(|&d| usize::try_from(d).unwrap_or(1).max(1))).collect();
                let n = shape.iter().product();
                Tensor::new(spec.name.clone(), shape, probe_values(spec.datatype, n, which)).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreparedRequest { inputs, outputs: (0..signature.outputs.len()).collect() })
    };
    let (a, b) = (row(0)?, row(1)?);
    let run = |session: &mut dyn Session, request: &PreparedRequest| {
        run_guarded(session, request).map_err(|e| format!("the probe's run failed: {e}"))
    };
    let apart_a = run(session, &a)?;
    let apart_b = run(session, &b)?;
    let joined_inputs = a
        .inputs
        .iter()
        .zip(&b.inputs)
        .map(|(x, y)| modelship_inference::concat_rows(&[x, y]).ok_or_else(|| "the probe's rows do not line up".to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let together = run(session, &PreparedRequest { inputs: joined_inputs, outputs: a.outputs.clone() })?;
    for ((joined, x), y) in together.into_iter().zip(&apart_a).zip(&apart_b) {
        let name = joined.name().to_owned();
        let pieces = joined.split_rows(&[1, 1]).map_err(|e| e.to_string())?;
        if !same_values(&pieces[0], x) || !same_values(&pieces[1], y) {
            return Err(format!("output '{name}' of a row changes when another row runs beside it"));
        }
    }
    Ok(())
}

/// Distinct, unremarkable values for probe row `which` (0 or 1): small numbers, not all equal.
fn probe_values(datatype: DataType, n: usize, which: usize) -> TensorData {
    let f = |j: usize| if which == 0 { ((j % 7) as f64 - 3.0) * 0.35 + 0.1 } else { ((j % 5) as f64 - 2.0) * 1.3 - 0.45 };
    let k = |j: usize| if which == 0 { (j % 3) as u8 } else { (j % 2) as u8 + 1 };
    match datatype {
        DataType::Bool => TensorData::Bool((0..n).map(|j| if which == 0 { j % 2 == 0 } else { j % 3 == 0 }).collect()),
        DataType::Uint8 => TensorData::Uint8((0..n).map(k).collect()),
        DataType::Uint16 => TensorData::Uint16((0..n).map(|j| k(j).into()).collect()),
        DataType::Uint32 => TensorData::Uint32((0..n).map(|j| k(j).into()).collect()),
        DataType::Uint64 => TensorData::Uint64((0..n).map(|j| k(j).into()).collect()),
        DataType::Int8 => TensorData::Int8((0..n).map(|j| k(j) as i8).collect()),
        DataType::Int16 => TensorData::Int16((0..n).map(|j| k(j).into()).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|j| k(j).into()).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|j| k(j).into()).collect()),
        DataType::Fp16 => TensorData::Fp16((0..n).map(|j| half::f16::from_f64(f(j))).collect()),
        DataType::Fp32 => TensorData::Fp32((0..n).map(|j| f(j) as f32).collect()),
        DataType::Fp64 => TensorData::Fp64((0..n).map(f).collect()),
        DataType::Bytes => TensorData::Bytes((0..n).map(|j| if which == 0 { b"a".to_vec() } else { format!("b{}", j % 2).into_bytes() }).collect()),
    }
}

/// The same shape and datatype, equal strings and integers, floats within a relative 1e-4.
fn same_values(a: &Tensor, b: &Tensor) -> bool {
    if a.shape() != b.shape() || a.datatype() != b.datatype() {
        return false;
    }
    match (a.data(), b.data()) {
        (TensorData::Bytes(x), TensorData::Bytes(y)) => x == y,
        (x, y) => (0..x.len()).all(|i| match (x.get_f64(i), y.get_f64(i)) {
            (Some(p), Some(q)) => p == q || (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-4 * p.abs().max(q.abs()).max(1.0),
            _ => false,
        }),
    }
}
