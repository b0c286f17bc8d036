//! An incremental parser of server-sent events (the `text/event-stream` format), with a
//! bounded line and event size.
//!
//! Bytes go in as they arrive ([`SseParser::push`]), in chunks split anywhere (inside a line,
//! between `\r` and `\n`, inside a UTF-8 character); complete events come out. Lines end with
//! `\n`, `\r\n` or `\r`; `data:` lines of one event are joined with `\n`; lines starting with
//! `:` are comments (keep-alives) and are skipped; a blank line ends an event; an event
//! without data is dropped; `id:` and `retry:` are read and ignored.

use std::collections::VecDeque;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event had none.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why a stream could not be parsed; the stream cannot continue after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line, or the data of one event, is over the limit.
    #[error("an event-stream line or event exceeds {limit_bytes} bytes")]
    TooLong {
        /// The limit in bytes.
        limit_bytes: usize,
    },
    /// A line is not UTF-8.
    #[error("an event-stream line is not UTF-8")]
    NotUtf8,
}

/// Incremental `text/event-stream` parser.
#[derive(Debug)]
pub struct SseParser {
    limit_bytes: usize,
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    at_start: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    ready: VecDeque<SseEvent>,
}

impl SseParser {
    /// A parser refusing lines and events over `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            event: None,
            data: String::new(),
            has_data: false,
            ready: VecDeque::new(),
        }
    }

    /// Feeds bytes; completed events are queued for [`SseParser::next_event`]. The queue
    /// holds at most as many events as the chunk had blank lines.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&chunk[..end])?;
            let crlf = chunk[end] == b'\r';
            chunk = &chunk[end + 1..];
            if crlf {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line)?;
            self.line = line;
            self.line.clear();
        }
        self.extend_line(chunk)
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limit_bytes {
            return Err(SseError::TooLong { limit_bytes: self.limit_bytes });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<(), SseError> {
        let mut line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let extra = usize::from(self.has_data) + value.len();
                if self.data.len() + extra > self.limit_bytes {
                    return Err(SseError::TooLong { limit_bytes: self.limit_bytes });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let event = event.filter(|e| !e.is_empty()).unwrap_or_else(|| "message".to_owned());
        self.ready.push_back(SseEvent { event, data: std::mem::take(&mut self.data) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], limit: usize) -> Result<Vec<SseEvent>, SseError> {
        let mut p = SseParser::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c)?;
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    const STREAM: &str = "\u{feff}: keep-alive\n\
        data: {\"a\":1}\n\n\
        event: put\r\ndata:{\"b\":\r\ndata: 2}\r\n\r\n\
        :comment\r\r\
        id: 7\rretry: 100\revent: error\rdata: é\r\r\
        event: empty\n\n\
        data\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![ev("message", "{\"a\":1}"), ev("put", "{\"b\":\n2}"), ev("error", "é"), ev("message", "")]
    }

    #[test]
    fn parses_fields_comments_and_every_line_ending() {
        assert_eq!(parse_all(&[STREAM.as_bytes()], 1024).unwrap(), expected());
    }

    #[test]
    fn any_split_into_two_or_three_chunks_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(parse_all(&[&bytes[..i], &bytes[i..]], 1024).unwrap(), expected(), "split {i}");
            for j in i..=bytes.len() {
                let got = parse_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]], 1024).unwrap();
                assert_eq!(got, expected(), "splits {i} {j}");
            }
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&one_by_one, 1024).unwrap(), expected());
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        assert_eq!(parse_all(&[b"data: x\n"], 1024).unwrap(), vec![]);
        assert_eq!(parse_all(&[b"data: x\n", b"\n"], 1024).unwrap(), vec![ev("message", "x")]);
    }

    #[test]
    fn lines_and_events_are_bounded() {
        let long_line = format!("data: {}", "x".repeat(100));
        assert_eq!(
            parse_all(&[long_line.as_bytes()], 64),
            Err(SseError::TooLong { limit_bytes: 64 }),
            "a line without an end is bounded too"
        );
        let many_lines = "data: 0123456789\n".repeat(10);
        assert_eq!(parse_all(&[many_lines.as_bytes()], 64), Err(SseError::TooLong { limit_bytes: 64 }));
        assert_eq!(parse_all(&[b"data: \xff\n"], 64), Err(SseError::NotUtf8));
    }
}
