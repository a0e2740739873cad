//! Rows of a data file fed to a model: which columns go to which input, tensors for a range of
//! rows, and the prediction of each row as `/v1/predict` answers it.

use std::str::FromStr;

use anyhow::{Context, bail};
use modelship_inference::{DataType, InferRequest, Signature, Tensor, TensorData, TensorSpec};
use serde_json::Value;

/// How one model input is filled from a row.
#[derive(Debug, Clone)]
struct Feed {
    spec: TensorSpec,
    /// Indices into a row's values, in the order they fill the input's row, and their names.
    columns: Vec<usize>,
    names: Vec<String>,
    /// The shape of one request for `n` rows, with `-1` where `n` goes (a batch dimension).
    template: Vec<i64>,
}

/// Every input of a model, each with its columns.
#[derive(Debug, Clone)]
pub struct Feeds {
    feeds: Vec<Feed>,
    /// Every input has a batch dimension: many rows go in one run.
    pub batched: bool,
    /// The output `/v1/predict` answers from.
    pub prediction: String,
}

/// The output predictions come from, by `/v1/predict`'s rule; an error when the model has none.
pub fn prediction_output(signature: &Signature) -> anyhow::Result<&TensorSpec> {
    let index = modelship_protocol::v1::prediction_output(signature).context("the model has no numeric output to predict from")?;
    Ok(&signature.outputs[index])
}

/// A classifier when its prediction output holds probabilities (by name, or two float columns).
pub fn looks_like_classifier(output: &TensorSpec) -> bool {
    modelship_protocol::v1::PROBABILITY_NAMES.contains(&output.name.as_str()) || (output.datatype.is_float() && output.shape.len() == 2 && output.shape[1] == 2)
}

fn shape_text(shape: &[i64]) -> String {
    format!("[{}]", shape.iter().map(|d| if *d < 0 { "N".to_owned() } else { d.to_string() }).collect::<Vec<_>>().join(", "))
}

/// The template of `spec` filled by `columns` values a row: the first dimension, when dynamic,
/// is the batch; one other dynamic dimension takes what the columns leave.
fn template(spec: &TensorSpec, columns: usize) -> anyhow::Result<Vec<i64>> {
    let mut shape = spec.shape.clone();
    let batched = shape.first().is_some_and(|d| *d < 0);
    let row_dims = if batched { &mut shape[1..] } else { &mut shape[..] };
    let fixed: i64 = row_dims.iter().filter(|d| **d >= 0).product();
    let dynamic = row_dims.iter().filter(|d| **d < 0).count();
    let fits = match dynamic {
        0 => usize::try_from(fixed) == Ok(columns),
        1 if fixed > 0 && columns as i64 % fixed == 0 => {
            let inferred = columns as i64 / fixed;
            row_dims.iter_mut().filter(|d| **d < 0).for_each(|d| *d = inferred);
            true
        }
        _ => false,
    };
    if !fits {
        bail!(
            "input '{}' of shape {} cannot take {columns} value{} a row; give --label and --ignore for the columns that are not features, or name a column after each input",
            spec.name,
            shape_text(&spec.shape),
            if columns == 1 { "" } else { "s" }
        );
    }
    Ok(shape)
}

impl Feeds {
    /// Columns to inputs: an input named like a column takes it; the one input left takes every
    /// remaining column in file order. `features` are the usable columns with their index in a row.
    pub fn plan(signature: &Signature, features: &[(usize, String)]) -> anyhow::Result<Feeds> {
        let mut used = vec![false; features.len()];
        let mut feeds = Vec::new();
        let mut unnamed = Vec::new();
        for spec in &signature.inputs {
            match features.iter().position(|(_, name)| *name == spec.name) {
                Some(i) => {
                    used[i] = true;
                    feeds.push(Feed { spec: spec.clone(), columns: vec![features[i].0], names: vec![features[i].1.clone()], template: template(spec, 1)? });
                }
                None => unnamed.push(spec),
            }
        }
        let rest: Vec<usize> = features.iter().zip(&used).filter(|(_, u)| !**u).map(|((i, _), _)| *i).collect();
        let rest_names: Vec<&str> = features.iter().zip(&used).filter(|(_, u)| !**u).map(|((_, n), _)| n.as_str()).collect();
        match (unnamed.as_slice(), rest.is_empty()) {
            ([], true) => {}
            ([], false) => bail!("columns {} feed no input of the model (inputs: {}); pass --ignore {} or --label", rest_names.join(", "), signature.input_names().join(", "), rest_names.join(",")),
            ([spec], false) => feeds.push(Feed { spec: (*spec).clone(), template: template(spec, rest.len())?, columns: rest, names: rest_names.iter().map(|n| (*n).to_owned()).collect() }),
            ([spec], true) => bail!("no column is left for input '{}' ({} {})", spec.name, spec.datatype, shape_text(&spec.shape)),
            (many, _) => bail!(
                "inputs {} have no column of their name; with several inputs, name a column after each (the one input left may take several columns)",
                many.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ")
            ),
        }
        // The model's order.
        feeds.sort_by_key(|f| signature.inputs.iter().position(|s| s.name == f.spec.name));
        let batched = feeds.iter().all(|f| f.template.first().is_some_and(|d| *d < 0));
        Ok(Feeds { feeds, batched, prediction: prediction_output(signature)?.name.clone() })
    }

    /// Inputs of zeros for a model with no data: one row per batch dimension; every other
    /// dimension must be fixed.
    pub fn synthetic(signature: &Signature, rows: usize) -> anyhow::Result<InferRequest> {
        let mut inputs = Vec::new();
        for spec in &signature.inputs {
            let mut shape = Vec::new();
            for (i, &d) in spec.shape.iter().enumerate() {
                match (i, d) {
                    (0, d) if d < 0 => shape.push(rows),
                    (_, d) if d >= 0 => shape.push(d as usize),
                    _ => bail!("input '{}' of shape {} has a dynamic dimension past the first: give --data rows to time it with", spec.name, shape_text(&spec.shape)),
                }
            }
            let n = shape.iter().product();
            let zeros = vec!["0"; n];
            inputs.push(Tensor::new(spec.name.clone(), shape, typed(spec, &zeros, |_| String::new())?)?);
        }
        Ok(InferRequest { id: None, inputs, outputs: Some(vec![prediction_output(signature)?.name.clone()]) })
    }

    /// A request for `rows` (each a row of text values; `first` the index of the first, for
    /// messages). Unbatched models take one row.
    pub fn request(&self, rows: &[&[String]], first: usize) -> anyhow::Result<InferRequest> {
        let mut inputs = Vec::with_capacity(self.feeds.len());
        for feed in &self.feeds {
            let shape: Vec<usize> = feed.template.iter().map(|&d| if d < 0 { rows.len() } else { d as usize }).collect();
            let values: Vec<&str> = rows.iter().flat_map(|row| feed.columns.iter().map(|&c| row[c].as_str())).collect();
            let width = feed.columns.len().max(1);
            let at = |i: usize| format!("row {}, column '{}'", first + i / width + 1, feed.names[i % width]);
            inputs.push(Tensor::new(feed.spec.name.clone(), shape, typed(&feed.spec, &values, at)?)?);
        }
        Ok(InferRequest { id: None, inputs, outputs: Some(vec![self.prediction.clone()]) })
    }
}

fn parse_all<T: FromStr>(values: &[&str], kind: &str, spec: &TensorSpec, at: &dyn Fn(usize) -> String) -> anyhow::Result<Vec<T>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v.trim();
            v.parse::<T>().map_err(|_| {
                let what = if v.is_empty() { "an empty value".to_owned() } else { format!("'{v}'") };
                anyhow::anyhow!("{}: {what} is not {kind} (input '{}' is {})", at(i), spec.name, spec.datatype)
            })
        })
        .collect()
}

/// Text values as the input's datatype, each checked (integers by range, floats finite).
fn typed(spec: &TensorSpec, values: &[&str], at: impl Fn(usize) -> String) -> anyhow::Result<TensorData> {
    let at: &dyn Fn(usize) -> String = &at;
    let floats = |values: &[&str]| -> anyhow::Result<Vec<f64>> {
        let parsed: Vec<f64> = parse_all(values, "a number", spec, at)?;
        if let Some(i) = parsed.iter().position(|v| !v.is_finite()) {
            bail!("{}: '{}' is not a finite number (input '{}')", at(i), values[i].trim(), spec.name);
        }
        Ok(parsed)
    };
    let integers = "an integer in the input's range";
    Ok(match spec.datatype {
        DataType::Fp32 => TensorData::Fp32(floats(values)?.into_iter().map(|v| v as f32).collect()),
        DataType::Fp64 => TensorData::Fp64(floats(values)?),
        DataType::Fp16 => TensorData::Fp16(floats(values)?.into_iter().map(half::f16::from_f64).collect()),
        DataType::Int8 => TensorData::Int8(parse_all(values, integers, spec, at)?),
        DataType::Int16 => TensorData::Int16(parse_all(values, integers, spec, at)?),
        DataType::Int32 => TensorData::Int32(parse_all(values, integers, spec, at)?),
        DataType::Int64 => TensorData::Int64(parse_all(values, integers, spec, at)?),
        DataType::Uint8 => TensorData::Uint8(parse_all(values, integers, spec, at)?),
        DataType::Uint16 => TensorData::Uint16(parse_all(values, integers, spec, at)?),
        DataType::Uint32 => TensorData::Uint32(parse_all(values, integers, spec, at)?),
        DataType::Uint64 => TensorData::Uint64(parse_all(values, integers, spec, at)?),
        DataType::Bool => TensorData::Bool(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v.trim() {
                    "1" | "true" | "True" | "TRUE" => Ok(true),
                    "0" | "false" | "False" | "FALSE" => Ok(false),
                    other => Err(anyhow::anyhow!("{}: '{other}' is not true, false, 0 or 1 (input '{}' is BOOL)", at(i), spec.name)),
                })
                .collect::<anyhow::Result<_>>()?,
        ),
        DataType::Bytes => TensorData::Bytes(values.iter().map(|v| v.as_bytes().to_vec()).collect()),
    })
}

/// One prediction per row from the prediction output, as `/v1/predict` answers it: a binary
/// classifier's probability of class 1, or the value. Several classes are refused.
pub fn row_predictions(output: &Tensor) -> anyhow::Result<Vec<f64>> {
    let Value::Array(rows) = modelship_protocol::v1::prediction_value(output) else {
        bail!("output '{}' gives no predictions", output.name());
    };
    rows.iter()
        .map(|v| match v {
            Value::Number(n) => n.as_f64().context("a prediction out of range"),
            Value::Bool(b) => Ok(f64::from(u8::from(*b))),
            Value::Array(classes) => bail!(
                "output '{}' has {} values a row: validate judges binary classifiers (the probability of class 1) and regressors, not {}-class models",
                output.name(),
                classes.len(),
                classes.len()
            ),
            other => bail!("output '{}' gives {other}, not a number", output.name()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, datatype, shape.to_vec())
    }

    fn signature(inputs: Vec<TensorSpec>) -> Signature {
        Signature { inputs, outputs: vec![spec("probabilities", DataType::Fp32, &[-1, 2])] }
    }

    fn features(names: &[&str]) -> Vec<(usize, String)> {
        names.iter().enumerate().map(|(i, n)| (i, (*n).to_owned())).collect()
    }

    fn rows(text: &[&[&str]]) -> Vec<Vec<String>> {
        text.iter().map(|r| r.iter().map(|v| (*v).to_owned()).collect()).collect()
    }

    #[test]
    fn the_one_input_left_takes_the_columns_in_order() {
        let feeds = Feeds::plan(&signature(vec![spec("input", DataType::Fp32, &[-1, 3])]), &features(&["a", "b", "c"])).unwrap();
        assert!(feeds.batched);
        let data = rows(&[&["1", "2", "3"], &["4", "5.5", "-6"]]);
        let refs: Vec<&[String]> = data.iter().map(Vec::as_slice).collect();
        let request = feeds.request(&refs, 0).unwrap();
        assert_eq!(request.inputs[0].shape(), [2, 3]);
        assert_eq!(request.inputs[0].data(), &TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0]));
        assert_eq!(request.outputs, Some(vec!["probabilities".to_owned()]));
        // A dynamic feature dimension takes as many columns as there are.
        let dynamic = Feeds::plan(&signature(vec![spec("input", DataType::Fp64, &[-1, -1])]), &features(&["a", "b"])).unwrap();
        assert_eq!(dynamic.request(&refs[..1], 0).unwrap().inputs[0].shape(), [1, 2]);
    }

    #[test]
    fn named_columns_feed_named_inputs_in_the_model_s_order() {
        let sig = signature(vec![spec("amount", DataType::Fp32, &[-1, 1]), spec("count", DataType::Int64, &[-1]), spec("rest", DataType::Fp32, &[-1, 2])]);
        let feeds = Feeds::plan(&sig, &features(&["x", "count", "amount", "y"])).unwrap();
        let data = rows(&[&["0.5", "7", "12.5", "1"]]);
        let refs: Vec<&[String]> = data.iter().map(Vec::as_slice).collect();
        let request = feeds.request(&refs, 0).unwrap();
        let got: Vec<(&str, &[usize])> = request.inputs.iter().map(|t| (t.name(), t.shape())).collect();
        assert_eq!(got, [("amount", &[1, 1][..]), ("count", &[1][..]), ("rest", &[1, 2][..])]);
        assert_eq!(request.inputs[1].data(), &TensorData::Int64(vec![7]));
        assert_eq!(request.inputs[2].data(), &TensorData::Fp32(vec![0.5, 1.0]));
        // A scalar input (the slow fixture's `iterations`): one row a run, shape [].
        let scalar = Feeds::plan(&signature(vec![spec("iterations", DataType::Int64, &[])]), &features(&["iterations"])).unwrap();
        assert!(!scalar.batched);
        let data = rows(&[&["40"]]);
        assert_eq!(scalar.request(&[data[0].as_slice()], 0).unwrap().inputs[0].shape(), [] as [usize; 0]);
    }

    #[test]
    fn columns_that_do_not_fit_say_what_to_do() {
        let one = signature(vec![spec("input", DataType::Fp32, &[-1, 3])]);
        let cases: Vec<(Signature, Vec<&str>, &str)> = vec![
            (one.clone(), vec!["a", "b"], "input 'input' of shape [N, 3] cannot take 2 values a row; give --label and --ignore"),
            (signature(vec![spec("a", DataType::Fp32, &[-1]), spec("b", DataType::Fp32, &[-1])]), vec!["a", "b", "c"], "columns c feed no input of the model (inputs: a, b); pass --ignore c"),
            (signature(vec![spec("a", DataType::Fp32, &[-1]), spec("b", DataType::Fp32, &[-1])]), vec!["x", "y"], "inputs 'a', 'b' have no column of their name"),
            (signature(vec![spec("a", DataType::Fp32, &[-1]), spec("b", DataType::Fp32, &[-1, 2])]), vec!["a"], "no column is left for input 'b'"),
        ];
        for (sig, names, want) in cases {
            let err = format!("{:#}", Feeds::plan(&sig, &features(&names)).unwrap_err());
            assert!(err.contains(want), "{err}\n(want {want})");
        }
        let feeds = Feeds::plan(&one, &features(&["a", "b", "c"])).unwrap();
        let data = rows(&[&["1", "2", "3"], &["4", "x", "6"]]);
        let refs: Vec<&[String]> = data.iter().map(Vec::as_slice).collect();
        let err = format!("{:#}", feeds.request(&refs, 10).unwrap_err());
        assert_eq!(err, "row 12, column 'b': 'x' is not a number (input 'input' is FP32)");
        let ints = Feeds::plan(&signature(vec![spec("n", DataType::Uint8, &[-1])]), &features(&["n"])).unwrap();
        let data = rows(&[&["300"]]);
        let err = format!("{:#}", ints.request(&[data[0].as_slice()], 0).unwrap_err());
        assert!(err.contains("'300' is not an integer in the input's range (input 'n' is UINT8)"), "{err}");
    }

    #[test]
    fn predictions_per_row_and_what_is_refused() {
        let probabilities = Tensor::new("probabilities", vec![2, 2], TensorData::Fp32(vec![0.75, 0.25, 0.5, 0.5])).unwrap();
        assert_eq!(row_predictions(&probabilities).unwrap(), [0.25, 0.5]);
        let values = Tensor::new("variable", vec![2, 1], TensorData::Fp64(vec![1.5, -2.0])).unwrap();
        assert_eq!(row_predictions(&values).unwrap(), [1.5, -2.0]);
        let three = Tensor::new("probabilities", vec![1, 3], TensorData::Fp32(vec![0.2, 0.3, 0.5])).unwrap();
        assert!(format!("{:#}", row_predictions(&three).unwrap_err()).contains("not 3-class models"));
        assert!(looks_like_classifier(&spec("probabilities", DataType::Fp32, &[-1, 2])));
        assert!(looks_like_classifier(&spec("scores", DataType::Fp32, &[-1, 2])));
        assert!(!looks_like_classifier(&spec("variable", DataType::Fp32, &[-1, 1])));
        let zeros = Feeds::synthetic(&signature(vec![spec("input", DataType::Fp32, &[-1, 3]), spec("iterations", DataType::Int64, &[])]), 4).unwrap();
        assert_eq!((zeros.inputs[0].shape(), zeros.inputs[1].shape()), (&[4, 3][..], &[][..]));
        assert!(Feeds::synthetic(&signature(vec![spec("input", DataType::Fp32, &[-1, -1])]), 1).is_err());
    }
}
