//! Protocol detection on the first bytes of a connection (plain text, or the
//! decrypted bytes after TLS): the HTTP/2 preface, an HTTP/1 request line,
//! else opaque TCP. Detection never trusts configuration: the bytes decide.
//!
//! Fail closed where a guess could let a client bypass header rewriting: a
//! connection whose first bytes look like the start of an HTTP request (an
//! upper-case method token and a space, or a prefix of the HTTP/2 preface)
//! that never completes its first line within the time limit is closed, not
//! forwarded as opaque bytes (that would carry a spoofed `l5d-client-id` to
//! the app untouched). A client that sends nothing at all within the limit
//! is forwarded as opaque TCP, so server-speaks-first protocols work, as in
//! linkerd2-proxy ("continuing after timeout").

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many bytes detection reads at most before deciding.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// Methods that decide HTTP/1 as soon as they are followed by a space.
const KNOWN_METHODS: [&[u8]; 9] = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"];

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (prior knowledge, or ALPN `h2`).
    Http2,
    /// Anything else: forwarded byte for byte.
    Opaque,
}

/// What the bytes so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Decided.
    Known(Protocol),
    /// More bytes are needed; `http_like` says the bytes so far could be HTTP.
    NeedMore {
        /// The prefix could still become an HTTP request.
        http_like: bool,
    },
}

/// Classifies a buffer; `full` means no more bytes will be read into it.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore { http_like: false };
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Verdict::Known(Protocol::Http2);
    }
    if H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore { http_like: true };
    }
    classify_http1(buf)
}

/// HTTP/1: `METHOD SP request-target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Verdict {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_').count();
    if method_len == 0 {
        return Verdict::Known(Protocol::Opaque);
    }
    match buf.get(method_len) {
        None if method_len < 32 => return Verdict::NeedMore { http_like: true },
        Some(b' ') if method_len < 32 => {}
        _ => return Verdict::Known(Protocol::Opaque),
    }
    let method = &buf[..method_len];
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") || KNOWN_METHODS.contains(&method) {
                Verdict::Known(Protocol::Http1)
            } else {
                Verdict::Known(Protocol::Opaque)
            }
        }
        // A known method and a space: HTTP (the HTTP server parses the rest,
        // or refuses it); a request line longer than the limit is HTTP too,
        // so the HTTP server refuses it rather than it passing as opaque.
        None if KNOWN_METHODS.contains(&method) || buf.len() >= MAX_DETECT_BYTES => Verdict::Known(Protocol::Http1),
        None => Verdict::NeedMore { http_like: true },
    }
}

/// Why detection gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// HTTP-like bytes that did not complete in time (or before EOF).
    #[error("incomplete HTTP request line after {0:?}")]
    Incomplete(Duration),
    /// Reading failed.
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `io` into `buf` until the protocol is known or `timeout`
/// passes. The bytes read stay in `buf` (replay them before the rest).
pub async fn detect<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, timeout: Duration) -> Result<Protocol, DetectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let http_like = match classify(buf) {
            Verdict::Known(protocol) => return Ok(protocol),
            Verdict::NeedMore { http_like } => http_like,
        };
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok(Protocol::Opaque);
        }
        buf.reserve(MAX_DETECT_BYTES - buf.len());
        let read = {
            let mut limited = (&mut *io).take((MAX_DETECT_BYTES - buf.len()) as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(buf)).await
        };
        match read {
            Ok(Ok(0)) | Err(_) if http_like => return Err(DetectError::Incomplete(timeout)),
            // Nothing (or non-HTTP bytes) before the deadline or EOF: opaque.
            Ok(Ok(0)) | Err(_) => return Ok(Protocol::Opaque),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http2_http1_and_opaque() {
        assert_eq!(classify(H2_PREFACE), Verdict::Known(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Verdict::NeedMore { http_like: true });
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Verdict::Known(Protocol::Http1));
        assert_eq!(classify(b"GET /"), Verdict::Known(Protocol::Http1));
        assert_eq!(classify(b"GE"), Verdict::NeedMore { http_like: true });
        assert_eq!(classify(b"PROPFIND /a HTTP/1.1\r\n"), Verdict::Known(Protocol::Http1));
        assert_eq!(classify(b"PROPFIND /a"), Verdict::NeedMore { http_like: true });
        assert_eq!(classify(b"PING\r\n"), Verdict::Known(Protocol::Opaque));
        assert_eq!(classify(b"SET k v\r\n"), Verdict::Known(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Verdict::Known(Protocol::Opaque));
        assert_eq!(classify(b"\x16\x03\x01"), Verdict::Known(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Verdict::Known(Protocol::Opaque));
        assert_eq!(classify(&[b'A'; 40]), Verdict::Known(Protocol::Opaque));
        let mut long = b"PROPFIND /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&long), Verdict::Known(Protocol::Http1), "an over-long request line goes to the HTTP server to be refused");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 256) as u8
                })
                .collect();
            let _ = classify(&bytes);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_http_like_prefixes_are_refused_and_silence_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROPFIND /slow").await.unwrap();
        let mut buf = BytesMut::new();
        let err = detect(&mut server, &mut buf, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, DetectError::Incomplete(_)), "{err}");

        let (_client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        assert_eq!(detect(&mut server, &mut buf, Duration::from_secs(10)).await.unwrap(), Protocol::Opaque);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn detection_keeps_the_bytes_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for part in [&b"GE"[..], b"T / HTTP/1.1\r\n"] {
                tokio::io::AsyncWriteExt::write_all(&mut client, part).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = BytesMut::new();
        assert_eq!(detect(&mut server, &mut buf, Duration::from_secs(10)).await.unwrap(), Protocol::Http1);
        assert!(buf.starts_with(b"GE"));
    }
}
