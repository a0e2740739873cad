/// A request body that could not be decoded. The message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    /// Wraps a serde_json error for the body as a whole, with advice for the usual mistakes.
    pub fn from_json(err: &serde_json::Error, body: &[u8]) -> Self {
        let msg = err.to_string();
        if err.is_syntax() && contains_non_finite_literal(body) {
            return DecodeError(format!(
                "malformed JSON: NaN and Infinity are not valid JSON numbers; send finite numbers ({msg})"
            ));
        }
        if err.is_eof() && body.iter().all(u8::is_ascii_whitespace) {
            return DecodeError("empty request body; send a JSON object".to_owned());
        }
        let kind = if err.is_data() { "invalid request" } else { "malformed JSON" };
        DecodeError(format!("{kind}: {msg}"))
    }

    /// Wraps a serde_json error met inside one field, dropping the position (which would be
    /// relative to the field, not to the body) and naming the field instead.
    pub fn in_field(field: &str, err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(at) => &msg[..at],
            None => &msg,
        };
        DecodeError(format!("{field}: {msg}"))
    }
}

fn contains_non_finite_literal(body: &[u8]) -> bool {
    body.windows(3).any(|w| w == b"NaN") || body.windows(8).any(|w| w == b"Infinity")
}
