//! `v2_json`: a whole body of `POST /v2/models/{m}/infer` as JSON, as the REST server decodes it
//! when the request has no binary part.

pub fn run(data: &[u8]) {
    let _ = modelship_protocol::v2::decode_request(data, None);
}
