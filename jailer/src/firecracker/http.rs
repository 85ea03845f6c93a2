//! HTTP/1.1 framing for the API socket: requests parsed by `httparse` from what a
//! connection has sent so far, with the header block and the body bounded; responses in
//! Firecracker's shape (`Server: Firecracker API`, JSON bodies, keep-alive).

/// Largest header block taken (request line and headers).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most headers taken.
const MAX_HEADERS: usize = 32;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`GET`, `PUT`, ...).
    pub method: String,
    /// The path (no query string).
    pub path: String,
    /// The body (empty when none was sent).
    pub body: Vec<u8>,
    /// Whether the client asked to close the connection after this answer.
    pub close: bool,
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// The headers are in, the body is not, and the client waits for `100 Continue`
    /// before sending it (curl does for bodies over 1 KiB).
    ExpectsContinue,
    /// A request, and the bytes it took.
    Complete(Request, usize),
    /// Malformed or too large: answer this fault and close the connection.
    Refused(String),
}

/// Parses the first request in `buf`; `max_body` bounds its body.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
            return Parsed::Refused(format!(
                "Request headers are larger than the limit of {MAX_HEADER_BYTES} bytes."
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(format!("More than {MAX_HEADERS} headers."))
        }
        Err(e) => return Parsed::Refused(format!("Invalid HTTP request: {e}.")),
    };
    if head_len > MAX_HEADER_BYTES {
        return Parsed::Refused(format!(
            "Request headers are larger than the limit of {MAX_HEADER_BYTES} bytes."
        ));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Refused("Invalid HTTP request.".into());
    };
    if version != 1 {
        return Parsed::Refused("Unsupported HTTP version.".into());
    }
    let mut length = 0usize;
    let mut close = false;
    let mut expect = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) => length = n,
                None => return Parsed::Refused("Invalid value. Key:Content-Length".into()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(
                "Unsupported transfer encoding: chunked bodies are not taken.".into(),
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if length > max_body {
        return Parsed::Refused(format!(
            "Request payload with size {length} is larger than the limit of {max_body} allowed by server."
        ));
    }
    let Some(end) = head_len.checked_add(length) else {
        return Parsed::Refused("Invalid value. Key:Content-Length".into());
    };
    if buf.len() < end {
        // Only before any of the body came: then the client is waiting for the answer.
        if expect && buf.len() == head_len {
            return Parsed::ExpectsContinue;
        }
        return Parsed::Partial;
    }
    let path = target.split('?').next().unwrap_or_default().to_owned();
    Parsed::Complete(
        Request {
            method: method.to_owned(),
            path,
            body: buf[head_len..end].to_vec(),
            close,
        },
        end,
    )
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    /// 200 with `value`.
    pub fn json(value: &impl serde::Serialize) -> Response {
        match serde_json::to_string(value) {
            Ok(body) => Response {
                status: 200,
                body: Some(body),
            },
            Err(e) => Response::fault(500, &format!("Serializing the answer: {e}")),
        }
    }

    /// `status` with `{"fault_message": msg}`.
    pub fn fault(status: u16, msg: &str) -> Response {
        Response {
            status,
            body: Some(serde_json::json!({ "fault_message": msg }).to_string()),
        }
    }

    /// 400 with `msg`.
    pub fn bad_request(msg: &str) -> Response {
        Response::fault(400, msg)
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nServer: Firecracker API\r\nConnection: {}\r\n",
            self.status,
            if close { "close" } else { "keep-alive" }
        );
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None => out.push_str("\r\n"),
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_in_pieces_and_pipelined() {
        let two = b"PUT /actions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n";
        assert_eq!(parse(&two[..30], 100), Parsed::Partial);
        assert_eq!(parse(&two[..54], 100), Parsed::Partial);
        let Parsed::Complete(r, n) = parse(two, 100) else {
            panic!("not complete")
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("PUT", "/actions", &b"{}"[..])
        );
        let Parsed::Complete(r, _) = parse(&two[n..], 100) else {
            panic!("second not complete")
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.len()),
            ("GET", "/", 0)
        );
    }

    #[test]
    fn a_client_expecting_continue_is_told_so() {
        let head =
            b"PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(head, 100), Parsed::ExpectsContinue);
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"{}");
        assert!(matches!(parse(&whole, 100), Parsed::Complete(..)));
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert!(matches!(parse(big.as_bytes(), 100), Parsed::Refused(_)));
        let body = b"PUT /x HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        match parse(body, 100) {
            Parsed::Refused(m) => assert!(m.contains("larger than the limit of 100"), "{m}"),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"\x00\x01 / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(parse(bad, 100), Parsed::Refused(_)), "{bad:?}");
        }
    }

    #[test]
    fn responses_look_like_firecrackers() {
        let r = Response::bad_request("no").to_bytes(false);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n{\"fault_message\":\"no\"}"), "{s}");
        assert_eq!(
            Response::no_content().to_bytes(false),
            b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
