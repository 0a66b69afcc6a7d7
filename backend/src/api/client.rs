//! A small HTTP client for the private API sockets of `--isolate`'s vNF processes (ADR 0018):
//! one request per connection, HTTP/1.0 (so the server answers with a `Content-Length` or
//! closes the connection, never chunks), every step under one deadline, the response size
//! bounded, the response head parsed by the `httparse` crate.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest response read from a vNF process (its metrics with many policy rules are the
/// biggest; a bigger answer is an error, not a memory hazard).
pub const MAX_RESPONSE: usize = 16 << 20;

/// Why a request to a vNF process got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed (the process is down, or restarting).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No complete answer before the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer over [`MAX_RESPONSE`].
    #[error("an answer over {MAX_RESPONSE} bytes")]
    TooBig,
    /// Not an HTTP response.
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// `method path` with `body` to the HTTP server on the unix socket `sock`, all within
/// `timeout`.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ClientError::Timeout(timeout))
    };
    let mut s = UnixStream::connect(sock)?;
    s.set_write_timeout(Some(left()?))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        s.set_read_timeout(Some(left()?))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout(timeout))
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        if buf.len() + n > MAX_RESPONSE {
            return Err(ClientError::TooBig);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse(&buf)? {
            return Ok(r);
        }
    }
    parse_at_eof(&buf)
}

/// The response in `buf` if it is complete (head parsed, `Content-Length` bytes of body).
fn parse(buf: &[u8]) -> Result<Option<Response>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let mut length = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(
                "a chunked answer to HTTP/1.0".into(),
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ClientError::Malformed("a bad Content-Length".into()))?;
            length = Some(n);
        }
    }
    let body = &buf[head_len..];
    match length {
        Some(n) if body.len() >= n => Ok(Some(Response {
            status,
            body: body[..n].to_vec(),
        })),
        _ => Ok(None),
    }
}

/// The response once the server closed the connection: its body runs to the end, unless a
/// `Content-Length` says it is cut short.
fn parse_at_eof(buf: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let cut = r
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"));
            if cut {
                return Err(ClientError::Malformed(
                    "the connection closed mid-body".into(),
                ));
            }
            Ok(Response {
                status: r.code.unwrap_or(0),
                body: buf[n..].to_vec(),
            })
        }
        Ok(httparse::Status::Partial) => Err(ClientError::Malformed(
            "the connection closed mid-head".into(),
        )),
        Err(e) => Err(ClientError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_and_bounded() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: x\r\n\r\nhello";
        assert_eq!(
            parse(ok).unwrap(),
            Some(Response {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(parse(&ok[..ok.len() - 1]).unwrap(), None);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse(b"garbage\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        let eof = parse_at_eof(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((eof.status, eof.body.len()), (204, 0));
        assert!(parse_at_eof(&ok[..ok.len() - 1]).is_err());
        assert!(parse_at_eof(b"HTTP/1.1 2").is_err());
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let p = std::env::temp_dir().join(format!("dpacc-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(c);
        });
        let e = request(&p, "GET", "/x", b"", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        t.join().unwrap();
        let _ = std::fs::remove_file(&p);
        assert!(matches!(
            request(&p, "GET", "/x", b"", Duration::from_secs(1)),
            Err(ClientError::Io(_))
        ));
    }
}
