use crate::DataType;

/// One input or output as the model declares it. `-1` in `shape` is a dimension of any size
/// (a dynamic batch dimension, typically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        TensorSpec { name: name.into(), datatype, shape }
    }

    /// Whether a tensor of shape `got` fits this spec.
    pub fn accepts_shape(&self, got: &[usize]) -> bool {
        self.shape.len() == got.len()
            && self
                .shape
                .iter()
                .zip(got)
                .all(|(&want, &got)| want < 0 || usize::try_from(want) == Ok(got))
    }

    /// True when the first dimension is dynamic: the model takes a batch of rows.
    pub fn has_batch_dim(&self) -> bool {
        self.shape.first().is_some_and(|&d| d < 0)
    }
}

/// The typed inputs and outputs of a model, in the model's own order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.inputs.iter().enumerate().find(|(_, s)| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.outputs.iter().enumerate().find(|(_, s)| s.name == name)
    }

    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|s| s.name.clone()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|s| s.name.clone()).collect()
    }
}

/// What a backend learned about a model when it loaded it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelInfo {
    pub signature: Signature,
    /// The runtime's platform name as Triton reports it, e.g. `onnxruntime_onnx`.
    pub platform: String,
    pub producer: Option<String>,
    pub opset: Option<i64>,
    /// Outputs the model has but that cannot be served as tensors (e.g. a ZipMap sequence of maps).
    pub skipped_outputs: Vec<String>,
    /// Where the session runs.
    pub placement: crate::Placement,
}
