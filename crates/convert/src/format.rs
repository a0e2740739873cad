//! What a model file is, from its first bytes (and, for ONNX, a protobuf decode of its header):
//! never from the extension alone, so `model.pkl` that is really ONNX is served as ONNX and a
//! renamed PyTorch checkpoint is refused with the way to export it.

use bytes::Bytes;
use prost::Message;

/// A model file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ONNX, served as it is.
    Onnx,
    /// A Python pickle, plain or written by joblib (maybe compressed): scikit-learn estimators
    /// and pipelines, XGBoost's and LightGBM's scikit-learn estimators. Untrusted code.
    Pickle(Compression),
    /// XGBoost's JSON model (`Booster.save_model("m.json")`).
    XgboostJson,
    /// XGBoost's Universal Binary JSON model (`.ubj`, the default since 2.1).
    XgboostUbj,
    /// LightGBM's text model (`Booster.save_model("m.txt")`).
    LightgbmText,
    /// A scikit-learn model saved by skops (`skops.io.dump`; MLflow's sklearn flavour writes
    /// `model.skops` by default): a zip of `schema.json` and NumPy arrays.
    Skops,
}

/// How a pickle is compressed (joblib's `compress=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zlib,
    Gzip,
    Bz2,
    Xz,
    Lzma,
}

impl Format {
    /// The name written in records and messages, and handed to the converter.
    pub fn name(self) -> &'static str {
        match self {
            Format::Onnx => "onnx",
            Format::Pickle(_) => "pickle",
            Format::XgboostJson => "xgboost-json",
            Format::XgboostUbj => "xgboost-ubj",
            Format::LightgbmText => "lightgbm-text",
            Format::Skops => "skops",
        }
    }

    /// For people: `pickle (joblib, zlib)`, `XGBoost JSON`...
    pub fn describe(self) -> String {
        match self {
            Format::Onnx => "ONNX".to_owned(),
            Format::Pickle(Compression::None) => "Python pickle".to_owned(),
            Format::Pickle(c) => format!("Python pickle ({} compressed, as joblib writes it)", c.name()),
            Format::XgboostJson => "XGBoost JSON model".to_owned(),
            Format::XgboostUbj => "XGBoost UBJSON model".to_owned(),
            Format::LightgbmText => "LightGBM text model".to_owned(),
            Format::Skops => "scikit-learn skops file".to_owned(),
        }
    }

    /// Whether loading it may run code or build objects the file chooses (a pickle; a skops
    /// file loaded with the types it names trusted).
    pub fn runs_code(self) -> bool {
        matches!(self, Format::Pickle(_) | Format::Skops)
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zlib => "zlib",
            Compression::Gzip => "gzip",
            Compression::Bz2 => "bz2",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
        }
    }
}

/// The formats modelship takes, for messages.
pub const ACCEPTED: &str = "ONNX; scikit-learn estimators and pipelines pickled with pickle or joblib (.pkl, .joblib) or saved by skops; \
XGBoost models (.json, .ubj, or a pickled XGBClassifier/XGBRegressor); LightGBM models (text, or a pickled \
LGBMClassifier/LGBMRegressor)";

/// Why a file is not a model modelship takes: what it looks like, and how to export it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{looks_like}: modelship takes {ACCEPTED}. {hint}")]
pub struct Unrecognized {
    pub looks_like: String,
    pub hint: String,
}

/// What a file's first bytes (at least [`HEAD`] of them, or all) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A format that is converted.
    Convertible(Format),
    /// A format modelship does not take, with the way to export it.
    Refused(Unrecognized),
    /// Possibly ONNX: only decoding the whole file tells.
    MaybeOnnx,
}

/// How many leading bytes [`classify_head`] needs.
pub const HEAD: usize = 256;

/// The format of `bytes`, a whole model file.
pub fn sniff(bytes: &Bytes) -> Result<Format, Unrecognized> {
    match classify_head(&bytes[..bytes.len().min(HEAD)], bytes.len() as u64) {
        Head::Convertible(f) => Ok(f),
        Head::Refused(e) => Err(e),
        Head::MaybeOnnx if is_onnx(bytes) => Ok(Format::Onnx),
        Head::MaybeOnnx if bytes.first().is_some_and(|b| *b == 0x08 || *b == 0x0a) => Err(Unrecognized {
            looks_like: "not a valid ONNX model: a protobuf message that does not decode as one (a truncated file, or a TensorFlow graph?)".to_owned(),
            hint: "Check that the file was copied whole; export TensorFlow models with tf2onnx: python -m tf2onnx.convert --saved-model DIR --output model.onnx.".to_owned(),
        }),
        Head::MaybeOnnx => Err(Unrecognized {
            looks_like: "not a valid ONNX model, nor any format modelship converts".to_owned(),
            hint: "Export models from other frameworks to ONNX (PyTorch: torch.onnx.export; TensorFlow/Keras: tf2onnx).".to_owned(),
        }),
    }
}

/// What the first bytes of a file of `len` bytes say, without reading the rest.
pub fn classify_head(head: &[u8], len: u64) -> Head {
    let refuse = |looks_like: &str, hint: &str| Head::Refused(Unrecognized { looks_like: looks_like.to_owned(), hint: hint.to_owned() });
    let pickle = |c| Head::Convertible(Format::Pickle(c));
    if head.is_empty() {
        return refuse("the file is empty", "Check the path, and that the model was written completely.");
    }
    // Pickle protocol 2+ starts with PROTO; joblib compresses with these containers.
    if head[0] == 0x80 && head.len() > 1 && (2..=5).contains(&head[1]) {
        return pickle(Compression::None);
    }
    if head.starts_with(b"\x1f\x8b") {
        return pickle(Compression::Gzip);
    }
    if head.starts_with(b"BZh") {
        return pickle(Compression::Bz2);
    }
    if head.starts_with(b"\xfd7zXZ\x00") {
        return pickle(Compression::Xz);
    }
    if head.starts_with(b"ZF") || (head.len() >= 2 && head[0] == 0x78 && matches!(head[1], 0x01 | 0x5e | 0x9c | 0xda)) {
        return pickle(Compression::Zlib);
    }
    if head.len() >= 5 && head[0] == 0x5d && (head[1..5] == [0, 0, 0x80, 0] || head[1..5] == [0, 0, 0, 1]) {
        return pickle(Compression::Lzma);
    }
    if head.starts_with(b"PK\x03\x04") && is_skops(head) {
        return Head::Convertible(Format::Skops);
    }
    if head.starts_with(b"PK\x03\x04") {
        return refuse(
            "a zip archive (a PyTorch checkpoint or TorchScript file, a Keras .keras file, or an MLflow model zipped)",
            "PyTorch: export with torch.onnx.export(model, example, \"model.onnx\"); Keras/TensorFlow: python -m tf2onnx.convert; \
an MLflow model: unzip it or import it with `modelship models import mlflow`.",
        );
    }
    if head.starts_with(b"\x89HDF\r\n\x1a\n") {
        return refuse("an HDF5 file (a Keras .h5 model)", "Export it with tf2onnx: python -m tf2onnx.convert --keras model.h5 --output model.onnx.");
    }
    if head.starts_with(b"binf") || head.starts_with(b"bs64") {
        return refuse(
            "an XGBoost model in the deprecated binary format",
            "Load it with XGBoost and save it again as JSON: booster.save_model(\"model.json\").",
        );
    }
    if head.starts_with(b"tree\n") || head.starts_with(b"tree\r\n") {
        return Head::Convertible(Format::LightgbmText);
    }
    if let Some(format) = xgboost(head) {
        return Head::Convertible(format);
    }
    if head.len() >= 10 && u64::from_le_bytes(head[..8].try_into().unwrap_or_default()) < len && head[8..].starts_with(b"{\"") {
        return refuse("a safetensors file (weights without the model's code)", "Export the model that uses these weights with torch.onnx.export.");
    }
    Head::MaybeOnnx
}

/// A zip whose first entry is skops': `schema.json`, or one of the arrays it names by number
/// (`140547360929776.npy`).
fn is_skops(head: &[u8]) -> bool {
    let Some(len) = head.get(26..28).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))) else { return false };
    let Some(name) = head.get(30..30 + len) else { return false };
    name == b"schema.json" || name.strip_suffix(b".npy").is_some_and(|stem| !stem.is_empty() && stem.iter().all(u8::is_ascii_digit))
}

/// XGBoost's JSON (`{"learner": ...`) or UBJSON (`{` then a typed key `learner` or `version`).
fn xgboost(bytes: &[u8]) -> Option<Format> {
    let head = &bytes[..bytes.len().min(256)];
    if head.first() != Some(&b'{') {
        return None;
    }
    let text = String::from_utf8_lossy(head);
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.starts_with("{\"learner\":") || compact.starts_with("{\"version\":") && compact.contains("\"learner\"") {
        return Some(Format::XgboostJson);
    }
    // UBJSON: '{', then a key as a length-typed string without the 'S' marker: i/U/I/l/L + length.
    let key_at = |at: usize| -> Option<&[u8]> {
        let (len, skip) = match *head.get(at)? {
            b'i' | b'U' => (usize::from(*head.get(at + 1)?), 2),
            b'I' => (usize::from(u16::from_be_bytes([*head.get(at + 1)?, *head.get(at + 2)?])), 3),
            b'l' => (u32::from_be_bytes(head.get(at + 1..at + 5)?.try_into().ok()?) as usize, 5),
            b'L' => (u64::from_be_bytes(head.get(at + 1..at + 9)?.try_into().ok()?) as usize, 9),
            _ => return None,
        };
        head.get(at + skip..at + skip + len)
    };
    matches!(key_at(1), Some(b"learner") | Some(b"version") | Some(b"Config")).then_some(Format::XgboostUbj)
}

#[derive(Clone, PartialEq, Message)]
struct ModelHeader {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(bytes = "bytes", tag = "7")]
    graph: Bytes,
}

/// An ONNX ModelProto: it decodes as protobuf, names an IR version and holds a graph. Weights
/// are not copied (the graph is a slice of `bytes`).
fn is_onnx(bytes: &Bytes) -> bool {
    match ModelHeader::decode(bytes.clone()) {
        Ok(header) => (1..=64).contains(&header.ir_version) && !header.graph.is_empty(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniffed(bytes: &[u8]) -> String {
        match sniff(&Bytes::copy_from_slice(bytes)) {
            Ok(f) => f.describe(),
            Err(e) => format!("refused: {}", e.looks_like),
        }
    }

    #[test]
    fn formats_from_content() {
        let onnx = {
            // ir_version 8, producer "x", graph with a name.
            let mut b = vec![0x08, 0x08, 0x12, 0x01, b'x', 0x3a, 0x03, 0x0a, 0x01, b'g'];
            b.extend_from_slice(&[0x42, 0x02, 0x10, 0x11]);
            b
        };
        let cases: &[(&[u8], &str)] = &[
            (&onnx, "ONNX"),
            (b"\x80\x04\x95\x10\x00\x00\x00", "Python pickle"),
            (b"\x80\x02csklearn.linear_model\n", "Python pickle"),
            (b"x\x9c\x03\x00", "Python pickle (zlib compressed, as joblib writes it)"),
            (b"\x1f\x8b\x08\x00", "Python pickle (gzip compressed, as joblib writes it)"),
            (b"BZh91AY", "Python pickle (bz2 compressed, as joblib writes it)"),
            (b"\xfd7zXZ\x00\x00", "Python pickle (xz compressed, as joblib writes it)"),
            (b"{\"learner\":{\"attributes\":{}}}", "XGBoost JSON model"),
            (b"{ \"version\": [3, 2, 0], \"learner\": {} }", "XGBoost JSON model"),
            (b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner{", "XGBoost UBJSON model"),
            (b"{i\x07learner{", "XGBoost UBJSON model"),
            (b"tree\nversion=v4\nnum_class=1\n", "LightGBM text model"),
            (b"PK\x03\x04\x14\x00\x00\x00\x00\x00\xe5\x03\x87]\xb8\x1dLo\x88\x00\x00\x00\x88\x00\x00\x00\x13\x00\x00\x00140547360929776.npy\x93NUMPY", "scikit-learn skops file"),
            (b"PK\x03\x04archive", "refused: a zip archive (a PyTorch checkpoint or TorchScript file, a Keras .keras file, or an MLflow model zipped)"),
            (b"\x89HDF\r\n\x1a\n", "refused: an HDF5 file (a Keras .h5 model)"),
            (b"binf\x00\x00", "refused: an XGBoost model in the deprecated binary format"),
            (b"{\"name\": \"not a model\"}", "refused: not a valid ONNX model, nor any format modelship converts"),
            (b"hello", "refused: not a valid ONNX model, nor any format modelship converts"),
            (b"", "refused: the file is empty"),
            (b"\x08\x96\x01garbage", "refused: not a valid ONNX model: a protobuf message that does not decode as one (a truncated file, or a TensorFlow graph?)"),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniffed(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_accepted_formats_and_the_export() {
        let e = sniff(&Bytes::from_static(b"PK\x03\x04")).unwrap_err().to_string();
        assert!(e.contains("scikit-learn") && e.contains("XGBoost") && e.contains("LightGBM") && e.contains("torch.onnx.export"), "{e}");
    }
}
