use std::collections::HashSet;

use crate::{InferError, Signature, Tensor};

/// A decoded request, not yet checked against any model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Names of the outputs to return; `None` returns every output.
    pub outputs: Option<Vec<String>>,
}

/// A request validated against a [`Signature`]: exactly one tensor per model input, in the
/// model's order, each with the declared datatype and a shape the model accepts; `outputs` are
/// indices into the signature's outputs, without duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRequest {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<usize>,
}

impl PreparedRequest {
    /// The first dimension of the first input: the number of rows, for models with a batch dimension.
    pub fn rows(&self) -> usize {
        self.inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
    }
}

/// The tensors a model returned, in the order they were requested.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferResponse {
    pub outputs: Vec<Tensor>,
}

impl Signature {
    /// Checks `request` against this signature and reorders its inputs to the model's order.
    /// Reports the first problem found; the message names the input or output at fault.
    pub fn prepare(&self, request: InferRequest) -> Result<PreparedRequest, InferError> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in request.inputs {
            let Some((index, spec)) = self.input(tensor.name()) else {
                return Err(InferError::UnknownInput {
                    input: tensor.name().to_owned(),
                    expected: self.input_names(),
                });
            };
            if tensor.datatype() != spec.datatype {
                return Err(InferError::DatatypeMismatch {
                    input: spec.name.clone(),
                    expected: spec.datatype,
                    got: tensor.datatype(),
                });
            }
            if !spec.accepts_shape(tensor.shape()) {
                return Err(InferError::ShapeMismatch {
                    input: spec.name.clone(),
                    expected: spec.shape.clone(),
                    got: tensor.shape().to_vec(),
                });
            }
            if slots[index].replace(tensor).is_some() {
                return Err(InferError::DuplicateInput { input: spec.name.clone() });
            }
        }
        let mut inputs = Vec::with_capacity(slots.len());
        for (slot, spec) in slots.into_iter().zip(&self.inputs) {
            inputs.push(slot.ok_or_else(|| InferError::MissingInput {
                input: spec.name.clone(),
                datatype: spec.datatype,
                shape: spec.shape.clone(),
            })?);
        }
        let outputs = match request.outputs {
            None => (0..self.outputs.len()).collect(),
            Some(names) => {
                let mut seen = HashSet::with_capacity(names.len());
                let mut indices = Vec::with_capacity(names.len());
                for name in names {
                    let Some((index, _)) = self.output(&name) else {
                        return Err(InferError::UnknownOutput { output: name, available: self.output_names() });
                    };
                    if !seen.insert(index) {
                        return Err(InferError::DuplicateOutput { output: name });
                    }
                    indices.push(index);
                }
                indices
            }
        };
        Ok(PreparedRequest { inputs, outputs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, TensorData, TensorSpec};

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec::new("a", DataType::Fp32, vec![-1, 2]),
                TensorSpec::new("b", DataType::Int64, vec![-1]),
            ],
            outputs: vec![
                TensorSpec::new("label", DataType::Int64, vec![-1]),
                TensorSpec::new("probabilities", DataType::Fp32, vec![-1, 2]),
            ],
        }
    }

    fn a(rows: usize) -> Tensor {
        Tensor::new("a", vec![rows, 2], TensorData::Fp32(vec![0.5; rows * 2])).unwrap()
    }

    fn b(rows: usize) -> Tensor {
        Tensor::new("b", vec![rows], TensorData::Int64(vec![1; rows])).unwrap()
    }

    fn check(inputs: Vec<Tensor>, outputs: Option<&[&str]>) -> String {
        let request = InferRequest {
            id: None,
            inputs,
            outputs: outputs.map(|o| o.iter().map(|s| s.to_string()).collect()),
        };
        match signature().prepare(request) {
            Ok(p) => format!(
                "ok inputs={:?} outputs={:?}",
                p.inputs.iter().map(|t| t.name()).collect::<Vec<_>>(),
                p.outputs
            ),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn prepare_reorders_inputs_and_selects_outputs() {
        assert_eq!(check(vec![b(3), a(3)], None), "ok inputs=[\"a\", \"b\"] outputs=[0, 1]");
        assert_eq!(check(vec![a(1), b(1)], Some(&["probabilities"])), "ok inputs=[\"a\", \"b\"] outputs=[1]");
    }

    #[test]
    fn prepare_names_the_problem() {
        let cases: Vec<(Vec<Tensor>, Option<&[&str]>, &str)> = vec![
            (vec![a(1)], None, "error: missing input 'b' (INT64 [-1]); every model input must be given"),
            (vec![a(1), b(1), a(1)], None, "error: input 'a' is given more than once"),
            (
                vec![Tensor::new("c", vec![1], TensorData::Int64(vec![1])).unwrap()],
                None,
                "error: unknown input 'c'; the model's inputs are: a, b",
            ),
            (
                vec![Tensor::new("a", vec![1, 2], TensorData::Fp64(vec![1.0, 2.0])).unwrap()],
                None,
                "error: input 'a' has datatype FP64 but the model expects FP32",
            ),
            (
                vec![Tensor::new("a", vec![1, 3], TensorData::Fp32(vec![1.0; 3])).unwrap()],
                None,
                "error: input 'a' has shape [1, 3] but the model expects [-1, 2] (-1 = any size)",
            ),
            (
                vec![Tensor::new("a", vec![2], TensorData::Fp32(vec![1.0; 2])).unwrap()],
                None,
                "error: input 'a' has shape [2] but the model expects [-1, 2] (-1 = any size)",
            ),
            (vec![a(1), b(1)], Some(&["proba"]), "error: unknown output 'proba'; the model's outputs are: label, probabilities"),
            (vec![a(1), b(1)], Some(&["label", "label"]), "error: output 'label' is requested more than once"),
        ];
        for (inputs, outputs, want) in cases {
            assert_eq!(check(inputs, outputs), want);
        }
    }
}
