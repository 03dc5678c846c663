//! A minimal HTTP/1.1 client over one keep-alive TCP connection.
//!
//! Hand-rolled rather than reqwest/hyper on purpose: the publisher needs exactly one plain-text
//! connection per lane, held open for the whole run, one request in flight on it, and to know
//! whether a failed request may still have reached the hub (written but unanswered) or
//! certainly did not (never written). A pooling client hides which connection a request used
//! and when it reconnects, which is what a paced benchmark must control; the whole protocol
//! needed here (one request shape, `Content-Length` or chunked answers) is a page of code.
//! Loopback only: no TLS, no redirects, no proxies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted; the hub's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// An answer: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request failed, in terms of whether the server may have acted on it.
#[derive(Debug)]
pub enum HttpError {
    /// The request was never (fully) written: the server did not act on it.
    NotSent(String),
    /// Written, but no complete answer arrived: the server may or may not have acted on it.
    NoAnswer(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::NotSent(e) => write!(f, "not sent: {e}"),
            HttpError::NoAnswer(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// One keep-alive connection to one server; reconnects lazily after any failure.
pub struct HttpClient {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    conn: Option<Reader<TcpStream>>,
    /// Request bytes, reused across requests.
    out: Vec<u8>,
}

impl HttpClient {
    /// A client for `base` (`http://host:port`); resolves the name now, connects on first use.
    pub async fn new(base: &str, timeout: Duration) -> Result<Self> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{base}: only http:// URLs are supported"))?
            .trim_end_matches('/')
            .to_string();
        if host.contains('/') {
            bail!("{base}: give the server's base URL, without a path");
        }
        let addr = tokio::net::lookup_host(&host)
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to nothing"))?;
        Ok(Self {
            addr,
            host,
            timeout,
            conn: None,
            out: Vec::with_capacity(1024),
        })
    }

    /// Opens the connection if it is not open (so the first timed request finds it ready).
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
                .await
                .map_err(|_| HttpError::NotSent("connect timed out".into()))?
                .map_err(|e| HttpError::NotSent(format!("connect: {e}")))?;
            // Requests are single small writes answered before the next: Nagle would only
            // delay them.
            let _ = stream.set_nodelay(true);
            self.conn = Some(Reader::new(stream));
        }
        Ok(())
    }

    /// Sends one request and reads its answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        self.connect().await?;
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        for (name, value) in headers {
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
        }
        if !body.is_empty() || method != "GET" {
            self.out
                .extend_from_slice(format!("\r\nContent-Length: {}", body.len()).as_bytes());
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);

        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(HttpError::NotSent("no connection".into()));
        };
        let written = tokio::time::timeout(timeout, conn.inner.write_all(&self.out)).await;
        if !matches!(written, Ok(Ok(()))) {
            self.conn = None;
            // A partial write is not a request the server can act on.
            return Err(HttpError::NotSent(match written {
                Ok(Err(e)) => format!("write: {e}"),
                _ => "write timed out".into(),
            }));
        }
        match tokio::time::timeout(timeout, conn.read_response()).await {
            Ok(Ok((response, keep_alive))) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok(response)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(HttpError::NoAnswer(format!("{e:#}")))
            }
            Err(_) => {
                // The answer may still come and would be read as the next request's.
                self.conn = None;
                Err(HttpError::NoAnswer("timed out".into()))
            }
        }
    }
}

/// A buffered reader that understands HTTP/1.1 response framing.
struct Reader<S> {
    inner: S,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[pos..]`.
    pos: usize,
}

/// The parts of a response head that framing depends on.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
            pos: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes; end of stream is an error (a response was expected).
    async fn fill(&mut self) -> Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 4096, 0);
        let n = self.inner.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        match n {
            Ok(0) => bail!("connection closed by the server"),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Returns the response and whether the connection may be reused.
    async fn read_response(&mut self) -> Result<(Response, bool)> {
        let head_len = loop {
            if let Some(at) = memmem::find(self.pending(), b"\r\n\r\n") {
                break at + 4;
            }
            if self.pending().len() > MAX_HEAD {
                bail!("response head over {MAX_HEAD} bytes");
            }
            self.fill().await?;
        };
        let head = parse_head(&self.pending()[..head_len])?;
        self.pos += head_len;
        let bodiless = head.status < 200 || head.status == 204 || head.status == 304;
        let body = if bodiless {
            Vec::new()
        } else if head.chunked {
            self.read_chunked().await?
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY {
                bail!("response body of {len} bytes");
            }
            self.read_exact_body(len).await?
        } else {
            bail!("response without Content-Length or chunked encoding");
        };
        Ok((
            Response {
                status: head.status,
                body,
            },
            !head.close,
        ))
    }

    async fn read_exact_body(&mut self, len: usize) -> Result<Vec<u8>> {
        while self.pending().len() < len {
            self.fill().await?;
        }
        let body = self.pending()[..len].to_vec();
        self.pos += len;
        Ok(body)
    }

    async fn read_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(at) = memmem::find(self.pending(), b"\r\n") {
                let line = self.pending()[..at].to_vec();
                self.pos += at + 2;
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD {
                bail!("line over {MAX_HEAD} bytes");
            }
            self.fill().await?;
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_text = std::str::from_utf8(&line)?
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            if size == 0 {
                // Trailer fields, up to an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                bail!("chunked body over {MAX_BODY} bytes");
            }
            body.extend(self.read_exact_body(size).await?);
            if !self.read_line().await?.is_empty() {
                bail!("chunk not followed by CRLF");
            }
        }
    }
}

fn parse_head(head: &[u8]) -> Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            head.close = v.contains("close") || (head.close && !v.contains("keep-alive"));
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &'static [u8]) -> Result<(Response, bool)> {
        Reader::new(bytes).read_response().await
    }

    #[tokio::test]
    async fn reads_content_length_and_chunked_answers() {
        let (r, keep) = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .expect("ok");
        assert_eq!(
            (r.status, r.body.as_slice(), keep),
            (200, &b"hello"[..], true)
        );

        let (r, keep) = read(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .await
        .expect("ok");
        assert_eq!(
            (r.status, r.body.as_slice(), keep),
            (401, &b"abcde"[..], false)
        );
    }

    #[tokio::test]
    async fn truncated_answers_are_errors() {
        assert!(read(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello")
            .await
            .is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\n").await.is_err());
        assert!(read(b"SSH-2.0\r\n\r\n").await.is_err());
    }

    #[tokio::test]
    async fn keeps_bytes_of_the_next_answer() {
        let mut r = Reader::new(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\naHTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"[..],
        );
        assert_eq!(r.read_response().await.expect("first").0.body, b"a");
        assert_eq!(r.read_response().await.expect("second").0.status, 204);
    }
}
