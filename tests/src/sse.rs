//! A Server-Sent Events client for tests, parsing the stream as the WHATWG HTML standard's
//! "Server-sent events" section says (event stream interpretation): lines end with CRLF, LF
//! or CR; a line starting with `:` is a comment; `field: value` (one leading space of the
//! value dropped; a line without `:` is a field with an empty value); `data` lines are joined
//! with LF; an empty line dispatches the event (none when its data is empty); `id` sets the
//! last event id unless it holds NUL; `retry` takes digits only. Comments are returned too,
//! so tests can see heartbeats.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `message` unless an `event:` line said otherwise.
    pub event: String,
    pub data: String,
    /// The last event id when this event was dispatched (as a browser would report it).
    pub last_event_id: String,
}

/// What the stream yields: events, and comments (ignored by browsers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Comment(String),
}

/// An open event stream.
pub struct SseClient {
    resp: reqwest::Response,
    buf: Vec<u8>,
    eof: bool,
    event: String,
    data: String,
    last_event_id: String,
    /// The last `retry:` the server sent.
    pub retry: Option<u64>,
}

impl SseClient {
    /// `GET url` with `headers`; fails unless it answers 200 `text/event-stream`.
    pub async fn connect(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self> {
        // An event stream lasts as long as the test reads it: the harness client's 10 s bound
        // on a whole request would cut it off on a slow machine. Each read is bounded by the
        // caller's `within` instead.
        let mut req = client
            .get(url)
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(3600));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            bail!("GET {url}: {status} {body}");
        }
        ensure!(
            ctype.starts_with("text/event-stream"),
            "GET {url}: content-type {ctype}"
        );
        Ok(Self {
            resp,
            buf: Vec::new(),
            eof: false,
            event: String::new(),
            data: String::new(),
            last_event_id: String::new(),
            retry: None,
        })
    }

    /// The next complete line (without its end), or None at the end of the stream.
    async fn line(&mut self) -> Result<Option<String>> {
        loop {
            let end = self.buf.iter().position(|&b| b == b'\n' || b == b'\r');
            match end {
                // A CR at the very end may be the first half of a CRLF: wait for more.
                Some(i) if !(self.buf[i] == b'\r' && i + 1 == self.buf.len() && !self.eof) => {
                    let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                    let skip = if self.buf[i] == b'\r' && self.buf.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    self.buf.drain(..i + skip);
                    return Ok(Some(line));
                }
                _ => {}
            }
            if self.eof {
                // An incomplete last line is discarded, as the standard says.
                return Ok(None);
            }
            match self.resp.chunk().await? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => self.eof = true,
            }
        }
    }

    /// The next event or comment; None when the stream ended.
    pub async fn next(&mut self) -> Result<Option<Item>> {
        loop {
            let Some(line) = self.line().await? else {
                return Ok(None);
            };
            if line.is_empty() {
                if self.data.is_empty() {
                    self.event.clear();
                    continue;
                }
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                let event = std::mem::take(&mut self.event);
                return Ok(Some(Item::Event(Event {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data,
                    last_event_id: self.last_event_id.clone(),
                })));
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Ok(Some(Item::Comment(
                    comment.strip_prefix(' ').unwrap_or(comment).to_string(),
                )));
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.event = value,
                "data" => {
                    self.data.push_str(&value);
                    self.data.push('\n');
                }
                "id" if !value.contains('\0') => self.last_event_id = value,
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    self.retry = value.parse().ok();
                }
                _ => {}
            }
        }
    }

    /// The next event, skipping comments; an error when the stream ends first, or when
    /// nothing comes within `within` (a guard against a hung test, not a measurement).
    pub async fn event(&mut self, within: Duration) -> Result<Event> {
        let next = async {
            loop {
                match self.next().await? {
                    Some(Item::Event(e)) => return Ok(e),
                    Some(Item::Comment(_)) => {}
                    None => bail!("the event stream ended"),
                }
            }
        };
        tokio::time::timeout(within, next)
            .await
            .context("no event in time")?
    }

    /// The next comment, skipping events (returned in order after it in `skipped`).
    pub async fn comment(&mut self, within: Duration, skipped: &mut Vec<Event>) -> Result<String> {
        let next = async {
            loop {
                match self.next().await? {
                    Some(Item::Comment(c)) => return Ok(c),
                    Some(Item::Event(e)) => skipped.push(e),
                    None => bail!("the event stream ended"),
                }
            }
        };
        tokio::time::timeout(within, next)
            .await
            .context("no comment in time")?
    }

    /// Every event until the stream ends (bounded by `within`).
    pub async fn rest(&mut self, within: Duration) -> Result<Vec<Event>> {
        let all = async {
            let mut out = Vec::new();
            while let Some(item) = self.next().await? {
                if let Item::Event(e) = item {
                    out.push(e);
                }
            }
            Ok(out)
        };
        tokio::time::timeout(within, all)
            .await
            .context("the event stream did not end in time")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser on a fixed text, through a local server (it reads a real response).
    #[tokio::test]
    async fn parses_the_standard_examples() -> Result<()> {
        let text = "retry: 1500\n: comment\ndata: YHOO\ndata: +2\r\ndata: 10\r\rid: 7\nevent: add\ndata\n\nid: 8\ndata:  two spaces\n\ndata: no end";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    text.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(text.as_bytes()).await;
            }
        });
        let client = reqwest::Client::new();
        let mut c = SseClient::connect(&client, &format!("http://{addr}/"), &[]).await?;
        assert_eq!(c.next().await?, Some(Item::Comment("comment".into())));
        let e = c.event(Duration::from_secs(5)).await?;
        assert_eq!(e.data, "YHOO\n+2\n10");
        assert_eq!(e.event, "message");
        assert_eq!(c.retry, Some(1500));
        let e = c.event(Duration::from_secs(5)).await?;
        assert_eq!(
            (e.event.as_str(), e.data.as_str(), e.last_event_id.as_str()),
            ("add", "", "7")
        );
        Ok(())
    }
}
