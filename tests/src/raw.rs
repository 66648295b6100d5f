//! Requests written byte by byte, for what reqwest would refuse to send or rewrite first
//! (malformed heads, conflicting lengths, the dot segments the `url` crate resolves), and
//! answers read to their end.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long an answer may take before the server counts as hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP answer as the bytes came: the status of its status line and the whole text.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub text: String,
}

impl RawAnswer {
    /// Reads an answer to its end: the server closes these connections after answering.
    pub async fn read(r: &mut (impl AsyncRead + Unpin)) -> Result<Self> {
        let mut raw = Vec::new();
        tokio::time::timeout(ANSWER_TIMEOUT, r.read_to_end(&mut raw))
            .await
            .context("no answer")??;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_once("\r\n\r\n")
            .map_or(text.as_str(), |(head, _)| head)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line in {text:?}"))?;
        Ok(Self { status, text })
    }

    /// The status line and header fields.
    pub fn head(&self) -> &str {
        self.parts().1
    }

    /// What follows the head ("" when nothing does).
    pub fn body(&self) -> &str {
        self.parts().2
    }

    /// (status, head, body).
    pub fn parts(&self) -> (u16, &str, &str) {
        let (head, body) = self.text.split_once("\r\n\r\n").unwrap_or((&self.text, ""));
        (self.status, head, body)
    }
}

/// Sends `request` as raw bytes to patternd on 127.0.0.1:`port` and reads the answer. It
/// writes while reading, so a server that answers before reading it all is heard.
pub async fn raw_request(port: u16, request: Vec<u8>) -> Result<RawAnswer> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        // The server may stop reading once it has refused the request.
        let _ = wr.write_all(&request).await;
        wr
    });
    // On no answer, the writer is left behind: it may be stuck on a server that reads no more.
    let answer = RawAnswer::read(&mut rd).await?;
    drop(writer.await);
    Ok(answer)
}
