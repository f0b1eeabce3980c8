//! One instance's output: a bounded buffer of recent lines, which readers can also follow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written (or read, for a runtime that does not say), ms since the epoch.
    pub at_ms: u64,
    /// Its stream.
    pub stream: LogStream,
    /// The text, without its newline.
    pub text: String,
}

/// Bytes of lines kept per instance, and the longest line kept whole. Each line is charged
/// its text and [`LINE_OVERHEAD`], so a guest that prints empty lines forever is bounded too.
const KEEP_BYTES: usize = 256 * 1024;
const MAX_LINE: usize = 4096;
const LINE_OVERHEAD: usize = 64;

/// The recent output of one instance: at most [`KEEP_BYTES`] of lines, the oldest dropped
/// first, so a chatty guest costs the node a fixed amount of memory.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
    follow: broadcast::Sender<LogLine>,
}

struct Inner {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// A line written in pieces, per stream, until its newline comes.
    partial: [Vec<u8>; 2],
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBuffer").finish_non_exhaustive()
    }
}

impl LogBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        let (follow, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(Inner { lines: VecDeque::new(), bytes: 0, partial: [Vec::new(), Vec::new()] })),
            follow,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change leaves the buffer whole, so a poisoned lock still guards valid lines.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends output as it arrives: whole lines are kept, a trailing piece waits for the rest
    /// of its line (or is cut at [`MAX_LINE`]).
    pub fn write(&self, stream: LogStream, bytes: &[u8]) {
        let mut inner = self.lock();
        let slot = stream as usize;
        let mut done = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                done.push(std::mem::take(&mut inner.partial[slot]));
            } else {
                inner.partial[slot].push(b);
                if inner.partial[slot].len() >= MAX_LINE {
                    done.push(std::mem::take(&mut inner.partial[slot]));
                }
            }
        }
        let at_ms = now_ms();
        for raw in done {
            let text = String::from_utf8_lossy(&raw).trim_end_matches('\r').to_string();
            self.push(&mut inner, LogLine { at_ms, stream, text });
        }
    }

    /// Appends one whole line.
    pub fn line(&self, line: LogLine) {
        let mut inner = self.lock();
        self.push(&mut inner, line);
    }

    fn push(&self, inner: &mut Inner, mut line: LogLine) {
        if line.text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.text.is_char_boundary(cut) {
                cut -= 1;
            }
            line.text.truncate(cut);
        }
        inner.bytes += line.text.len() + LINE_OVERHEAD;
        inner.lines.push_back(line.clone());
        while inner.bytes > KEEP_BYTES {
            match inner.lines.pop_front() {
                Some(old) => inner.bytes -= old.text.len() + LINE_OVERHEAD,
                None => break,
            }
        }
        // Nobody following is fine.
        let _ = self.follow.send(line);
    }

    /// The lines written at or after `since_ms`, the last `tail` of them.
    pub fn read(&self, since_ms: u64, tail: Option<usize>) -> Vec<LogLine> {
        select(&self.lock(), since_ms, tail)
    }

    /// The lines read so far and a follower that continues right after them, with no line
    /// lost or repeated in between: lines are sent to followers under the same lock. A reader
    /// that falls more than 1,024 lines behind skips ahead (its receiver says how many).
    pub fn read_and_follow(&self, since_ms: u64, tail: Option<usize>) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let inner = self.lock();
        (select(&inner, since_ms, tail), self.follow.subscribe())
    }
}

fn select(inner: &Inner, since_ms: u64, tail: Option<usize>) -> Vec<LogLine> {
    let lines: Vec<&LogLine> = inner.lines.iter().filter(|l| l.at_ms >= since_ms).collect();
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    lines.into_iter().skip(skip).cloned().collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_joined_and_bounded() {
        let logs = LogBuffer::new();
        logs.write(LogStream::Stdout, b"hel");
        logs.write(LogStream::Stderr, b"oops\n");
        logs.write(LogStream::Stdout, b"lo\nworld\r\n");
        let texts: Vec<String> = logs.read(0, None).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["oops", "hello", "world"]);
        assert_eq!(logs.read(0, Some(1))[0].text, "world");
        let chunk = vec![b'x'; 1000];
        for _ in 0..2000 {
            logs.write(LogStream::Stdout, &chunk);
            logs.write(LogStream::Stdout, b"\n");
        }
        let kept = logs.read(0, None);
        assert!(kept.iter().map(|l| l.text.len() + LINE_OVERHEAD).sum::<usize>() <= KEEP_BYTES);
        assert!(kept.len() > 200, "{}", kept.len());
        // Empty lines are bounded too.
        logs.write(LogStream::Stdout, &vec![b'\n'; 100_000]);
        assert!(logs.read(0, None).len() <= KEEP_BYTES / LINE_OVERHEAD);
        // A line without an end is cut, not held forever.
        logs.write(LogStream::Stderr, &vec![b'y'; MAX_LINE * 3]);
        assert_eq!(logs.read(0, Some(3)).iter().filter(|l| l.stream == LogStream::Stderr).count(), 3);
    }
}
