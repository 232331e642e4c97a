//! The encoding of a resource response, from the request's `Accept` header,
//! the way kube-apiserver's output negotiation picks it: clauses by
//! descending q-value (ties keep their order), the first one the server can
//! produce wins.
//!
//! `application/vnd.kubernetes.protobuf` (with or without `;stream=watch`) is
//! protobuf for kinds with a protobuf form; `application/json`, `*/*` and
//! `application/*` are JSON. A kind without a protobuf form skips the
//! protobuf clause, so client-go's `application/vnd.kubernetes.protobuf,
//! application/json` gets JSON, as from kube-apiserver for custom resources;
//! an `Accept` that offers protobuf and nothing tessera can produce is 406.
//! Other media types (tessera produces no YAML) fall back to JSON, as tessera
//! always answered. Table requests (`as=Table`) are decided before this, in
//! `crate::table`.

use tessera_api::ApiError;

/// The protobuf media type.
pub const PROTOBUF: &str = tessera_api::protobuf::MEDIA_TYPE;
/// The content type of a protobuf watch stream.
pub const PROTOBUF_WATCH: &str = "application/vnd.kubernetes.protobuf;stream=watch";

/// How a response body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON (`application/json`).
    Json,
    /// Kubernetes protobuf (`application/vnd.kubernetes.protobuf`).
    Protobuf,
}

/// Picks the encoding for `accept`; `protobuf` says whether the kind has a
/// protobuf form.
pub fn encoding(accept: &str, protobuf: bool) -> Result<Encoding, ApiError> {
    let mut clauses: Vec<(f32, usize, String)> = Vec::new();
    for (index, clause) in accept.split(',').enumerate() {
        let mut parts = clause.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim() == "q")
            .map_or(1.0, |(_, v)| v.trim().parse().unwrap_or(0.0));
        if q > 0.0 {
            clauses.push((q, index, media));
        }
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut offered_protobuf = false;
    for (_, _, media) in &clauses {
        match media.as_str() {
            PROTOBUF if protobuf => return Ok(Encoding::Protobuf),
            PROTOBUF => offered_protobuf = true,
            "application/json" | "*/*" | "application/*" => return Ok(Encoding::Json),
            _ => {}
        }
    }
    if offered_protobuf && clauses.iter().all(|(_, _, m)| m == PROTOBUF) {
        return Err(ApiError::not_acceptable(&["application/json"]));
    }
    Ok(Encoding::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_like_kube_apiserver() {
        let pb = Ok(Encoding::Protobuf);
        let json = Ok(Encoding::Json);
        assert_eq!(encoding("application/vnd.kubernetes.protobuf, */*", true), pb);
        assert_eq!(encoding("application/vnd.kubernetes.protobuf;stream=watch", true), pb);
        assert_eq!(encoding("application/json, application/vnd.kubernetes.protobuf", true), json);
        assert_eq!(encoding("application/json;q=0.5, application/vnd.kubernetes.protobuf", true), pb);
        assert_eq!(encoding("application/vnd.kubernetes.protobuf, application/json", false), json);
        assert_eq!(encoding("", true), json);
        assert_eq!(encoding("*/*", true), json);
        assert_eq!(encoding("application/yaml", true), json);
        let refused = encoding("application/vnd.kubernetes.protobuf", false).expect_err("406");
        assert_eq!((refused.code, refused.reason), (406, "NotAcceptable"));
        assert_eq!(refused.message, "only the following media types are accepted: application/json");
    }
}
