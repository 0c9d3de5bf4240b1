//! The view of an incoming HTTP request that the verifier needs.

/// What the verifier knows about the request body.
///
/// The verifier chooses the payload line of the canonical request itself:
/// the `x-amz-content-sha256` header when the client sent one (checked
/// against this body unless it is `UNSIGNED-PAYLOAD`), otherwise the SHA-256
/// of this body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The complete body, byte for byte as received (before any
    /// decompression or parsing). Use `Bytes(b"")` for a bodiless request.
    Bytes(&'a [u8]),
    /// The lowercase hex SHA-256 of the complete body, computed by the
    /// caller (for example while buffering a stream).
    Sha256Hex(&'a str),
}

/// An incoming request, borrowed from whatever HTTP stack received it.
///
/// Everything must be **exactly as received**: the path still
/// percent-encoded (`%2F` not turned into `/`), the query string raw, the
/// `Host` header as the client sent it (including a non-default port), and
/// every header value, repeated names included.
#[derive(Debug, Clone)]
pub struct VerifyRequest<'a> {
    pub(crate) method: &'a str,
    pub(crate) raw_path: &'a str,
    pub(crate) raw_query: &'a str,
    pub(crate) headers: Vec<(&'a str, &'a [u8])>,
    pub(crate) payload: Payload<'a>,
}

impl<'a> VerifyRequest<'a> {
    /// A request with no headers yet; add them with [`header`](Self::header).
    ///
    /// `raw_path` is the origin-form path without the query; `raw_query` is
    /// what follows the `?` (a leading `?` is tolerated), or `""`.
    #[must_use]
    pub fn new(
        method: &'a str,
        raw_path: &'a str,
        raw_query: &'a str,
        payload: Payload<'a>,
    ) -> Self {
        Self {
            method,
            raw_path,
            raw_query: raw_query.strip_prefix('?').unwrap_or(raw_query),
            headers: Vec::new(),
            payload,
        }
    }

    /// Adds one header line. Names are matched case-insensitively; call
    /// again with the same name for a repeated header.
    #[must_use]
    pub fn header(mut self, name: &'a str, value: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        self.push_header(name, value);
        self
    }

    /// Adds one header line, in place.
    pub fn push_header(&mut self, name: &'a str, value: &'a (impl AsRef<[u8]> + ?Sized)) {
        self.headers.push((name, value.as_ref()));
    }

    /// Borrows method, path, query and headers from `http` request parts.
    ///
    /// When there is no `Host` header (HTTP/2 sends `:authority` instead),
    /// the URI authority stands in for it.
    #[must_use]
    pub fn from_http_parts(parts: &'a http::request::Parts, payload: Payload<'a>) -> Self {
        Self::from_pieces(&parts.method, &parts.uri, &parts.headers, payload)
    }

    /// Like [`from_http_parts`](Self::from_http_parts), for a whole
    /// `http::Request` (its body is not looked at; pass it as `payload`).
    #[must_use]
    pub fn from_http_request<B>(req: &'a http::Request<B>, payload: Payload<'a>) -> Self {
        Self::from_pieces(req.method(), req.uri(), req.headers(), payload)
    }

    fn from_pieces(
        method: &'a http::Method,
        uri: &'a http::Uri,
        headers: &'a http::HeaderMap,
        payload: Payload<'a>,
    ) -> Self {
        let mut req = Self::new(
            method.as_str(),
            uri.path(),
            uri.query().unwrap_or(""),
            payload,
        );
        for (name, value) in headers {
            req.push_header(name.as_str(), value.as_bytes());
        }
        if !headers.contains_key(http::header::HOST)
            && let Some(authority) = uri.authority()
        {
            let host = authority.as_str();
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            req.push_header("host", host);
        }
        req
    }

    /// The request method as received.
    #[must_use]
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The raw (still percent-encoded) path.
    #[must_use]
    pub fn raw_path(&self) -> &'a str {
        self.raw_path
    }

    /// The raw query string, without the `?`.
    #[must_use]
    pub fn raw_query(&self) -> &'a str {
        self.raw_query
    }

    /// The body information given at construction.
    #[must_use]
    pub fn payload(&self) -> Payload<'a> {
        self.payload
    }

    /// Every value of the header `name` (case-insensitive), in order.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_http_uses_authority_without_host() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://user@localhost:8080/things/a%2Fb?x=1")
            .header("X-Amz-Date", "20250102T030405Z")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap();
        let v = VerifyRequest::from_http_request(&req, Payload::Bytes(b""));
        assert_eq!(v.method(), "POST");
        assert_eq!(v.raw_path(), "/things/a%2Fb");
        assert_eq!(v.raw_query(), "x=1");
        assert_eq!(
            v.header_values("HOST").collect::<Vec<_>>(),
            [b"localhost:8080"]
        );
        assert_eq!(v.header_values("x-multi").count(), 2);
    }

    #[test]
    fn strips_question_mark() {
        let v = VerifyRequest::new("GET", "/", "?a=b", Payload::Bytes(b""));
        assert_eq!(v.raw_query(), "a=b");
    }
}
