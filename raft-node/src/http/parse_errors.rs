//! JSON bodies for the answers hyper writes by itself: a request it cannot parse never reaches
//! the router, and hyper answers 400 (a malformed request line or header), 414 (a URI over its
//! limit) or 431 (headers over its buffer) with a status line and no body. This stream wrapper
//! recognizes exactly those heads (one of these statuses, `content-length: 0`, no
//! `content-type`: every answer of the router has a JSON body and a content type) as hyper
//! writes them, and writes the same head with a JSON body with a stable code instead, like every
//! other error of the API. Everything else passes through untouched.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use raft_client::api::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's stream with hyper's own error answers rewritten as JSON.
pub(crate) struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer being written: its bytes, how many are written, and the length of
    /// hyper's original buffer (reported as written once the replacement is out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonParseErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, pending: None }
    }
}

/// The replacement of `head` when it is one of hyper's bodiless parse-error answers.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let (code, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (ErrorCode::BadRequest, "the request could not be parsed as HTTP/1.1"),
        b"HTTP/1.1 414 " => (ErrorCode::TooLarge, "the request URI is too long"),
        b"HTTP/1.1 431 " => (ErrorCode::TooLarge, "the request headers are too large"),
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let headers = text.strip_suffix("\r\n\r\n")?;
    let mut lines = headers.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-type:") || lower.starts_with("transfer-encoding:") {
            return None;
        }
        if let Some(length) = lower.strip_prefix("content-length:") {
            empty = length.trim() == "0";
            continue;
        }
        kept.push(line);
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_vec(&ApiError {
        code,
        message: message.to_owned(),
        leader: None,
        current: None,
        quota: None,
    })
    .ok()?;
    let mut out =
        format!("{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len())
            .into_bytes();
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    /// Writes the pending replacement out; `Ready(n)` with the original buffer's length once
    /// it is all written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, original)) = self.pending.as_mut() {
            if *written == bytes.len() {
                let original = *original;
                self.pending = None;
                return Poll::Ready(Ok(original));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(replacement) => this.pending = Some((replacement, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
            // hyper's error answer is a head alone, in one buffer.
            if let (Some(head), None) = (nonempty.next(), nonempty.next()) {
                if let Some(replacement) = rewrite(head) {
                    this.pending = Some((replacement, 0, head.len()));
                    return this.poll_pending(cx);
                }
            }
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.poll_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_parse_error_heads_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(head).expect("rewritten")).unwrap();
        let (headers, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(headers.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(headers.contains("content-type: application/json") && headers.contains("connection: close"));
        assert!(headers.contains(&format!("content-length: {}", body.len())));
        let error: ApiError = serde_json::from_str(body).unwrap();
        assert_eq!(error.code, ErrorCode::TooLarge);
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").is_some());
        // The router's own answers carry a body and a content type: untouched.
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 4",
        ] {
            assert!(rewrite(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
    }
}
