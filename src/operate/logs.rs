//! `fleet logs`: the logs of every matching instance across hosts, stdout and stderr kept
//! apart and marked, each line prefixed `api#1@web2 (err):`, merged by timestamp.
//!
//! The engine is asked for timestamps (`timestamps=true`): every line then starts with its
//! RFC 3339 nano time, which is what lines from different containers and hosts are merged by.
//! Following (`-f`) reads every container's stream at once and re-lists the hosts every few
//! seconds, so a container that appears (a deploy replacing an instance) or comes back (a
//! restart ends the engine's follow stream) is picked up; lines already printed are skipped by
//! their timestamp.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Selector, instance_label};
use crate::host::HostSession;
use crate::observe::Connected;
use crate::observe::ObservedContainer;
use crate::observe::read::list_containers;

/// Which of a container's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// One line of one container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Nanoseconds since the Unix epoch (the engine's timestamp), for merging.
    pub nanos: i128,
    /// The engine's timestamp as it sent it.
    pub time: String,
    /// `api#1@web2`.
    pub source: String,
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    /// `api#1@web2 (err): text`, with the engine's timestamp in front when asked.
    pub fn render(&self, timestamps: bool) -> String {
        if timestamps {
            format!(
                "{} {} ({}): {}",
                self.time,
                self.source,
                self.stream.as_str(),
                self.text
            )
        } else {
            format!("{} ({}): {}", self.source, self.stream.as_str(), self.text)
        }
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Only this stream; both when `None`.
    pub stream: Option<Stream>,
    /// Only lines newer than this many seconds ago.
    pub since: Option<Duration>,
    /// Only the last N lines of each container.
    pub tail: Option<u64>,
}

/// Nanoseconds since the epoch of an RFC 3339 time with up to 9 fractional digits
/// (`2026-11-28T01:21:17.65107864Z`; Go trims trailing zeros).
pub fn parse_time(t: &str) -> Option<i128> {
    let t = t.strip_suffix('Z')?;
    let (whole, frac) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t, ""),
    };
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = humantime::parse_rfc3339(&format!("{whole}Z"))
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i128;
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(secs * 1_000_000_000 + nanos)
}

/// The lines of one chunk the engine sent (`<time> <text>\n` per line).
pub fn split_chunk(source: &str, stream: Stream, chunk: &[u8]) -> Vec<LogLine> {
    String::from_utf8_lossy(chunk)
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let l = l.strip_suffix('\r').unwrap_or(l);
            let (time, text) = l.split_once(' ').unwrap_or((l, ""));
            match parse_time(time) {
                Some(nanos) => LogLine {
                    nanos,
                    time: time.to_string(),
                    source: source.to_string(),
                    stream,
                    text: text.to_string(),
                },
                // Not a timestamp: keep the whole line, sorted first.
                None => LogLine {
                    nanos: 0,
                    time: String::new(),
                    source: source.to_string(),
                    stream,
                    text: l.to_string(),
                },
            }
        })
        .collect()
}

/// The last `tail` lines of one container's lines (all when `None`).
pub fn keep_tail(mut lines: Vec<LogLine>, tail: Option<u64>) -> Vec<LogLine> {
    if let Some(n) = tail {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if lines.len() > n {
            lines.drain(..lines.len() - n);
        }
    }
    lines
}

/// Lines of several containers merged by time (stable: lines with the same time keep the order
/// each container gave them).
pub fn merge(mut lines: Vec<LogLine>) -> Vec<LogLine> {
    lines.sort_by_key(|l| l.nanos);
    lines
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn docker_options(o: &LogOptions, follow: bool, since: Option<i64>) -> LogsOptions {
    let since = since
        .or_else(|| o.since.map(|d| now_unix() - d.as_secs() as i64))
        .unwrap_or(0);
    LogsOptions {
        follow,
        stdout: o.stream != Some(Stream::Err),
        stderr: o.stream != Some(Stream::Out),
        since: since.clamp(0, i32::MAX as i64) as i32,
        until: 0,
        timestamps: true,
        // The engine counts `tail` over both streams before it drops the unwanted one: with a
        // stream chosen, everything is read and the tail is cut here (`keep_tail`).
        tail: match (o.tail, o.stream) {
            (Some(n), None) => n.to_string(),
            _ => "all".into(),
        },
    }
}

/// The stream (and the line's marker) of one frame; stdin / console frames are not logs.
fn frame(o: LogOutput) -> Option<(Stream, bytes::Bytes)> {
    match o {
        LogOutput::StdOut { message } => Some((Stream::Out, message)),
        LogOutput::StdErr { message } => Some((Stream::Err, message)),
        // A container with a TTY has one stream: call it out.
        LogOutput::Console { message } => Some((Stream::Out, message)),
        LogOutput::StdIn { .. } => None,
    }
}

/// One container on one host, with the name its lines carry.
struct Source {
    host: String,
    container: ObservedContainer,
}

impl Source {
    fn label(&self) -> String {
        instance_label(
            self.container.app.as_deref().unwrap_or("?"),
            self.container.instance,
            &self.host,
        )
    }
}

async fn sources(cx: &Connected, s: &HostSession, sel: &Selector) -> Result<Vec<Source>, String> {
    let host = s.target().name.clone();
    let list = list_containers(s, &cx.desired.project, &cx.desired.environment)
        .await
        .map_err(|f| format!("{} ({}): {}", f.host, f.address, f.message))?;
    Ok(list
        .into_iter()
        .filter(|c| sel.matches(c.app.as_deref(), c.instance, &host))
        .map(|container| Source {
            host: host.clone(),
            container,
        })
        .collect())
}

/// Matching hosts' sessions, and an error line for each host that could not be used.
fn sessions<'a>(cx: &'a Connected, sel: &Selector) -> (Vec<&'a HostSession>, Vec<String>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (t, s) in cx.hosts() {
        if sel.host.as_deref().is_some_and(|h| h != t.name) {
            continue;
        }
        match s {
            Ok(s) => ok.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (ok, errors)
}

/// Every matching container's logs, merged by time. Also returns one message per host or
/// container that could not be read.
pub async fn collect(
    cx: &Connected,
    sel: &Selector,
    o: &LogOptions,
) -> (Vec<LogLine>, Vec<String>) {
    let (hosts, mut errors) = sessions(cx, sel);
    let per_host = futures_util::future::join_all(hosts.into_iter().map(|s| async move {
        let list = sources(cx, s, sel).await?;
        let docker = s.docker().await.map_err(|e| e.to_string())?;
        let per_container = futures_util::future::join_all(list.iter().map(|src| {
            let docker = docker.clone();
            async move {
                let label = src.label();
                let mut out = Vec::new();
                let mut st = docker.logs(&src.container.id, Some(docker_options(o, false, None)));
                while let Some(item) = st.next().await {
                    match item {
                        Ok(f) => {
                            if let Some((stream, bytes)) = frame(f) {
                                out.extend(split_chunk(&label, stream, &bytes));
                            }
                        }
                        Err(e) => return Err(format!("{label}: reading logs: {e}")),
                    }
                }
                Ok(keep_tail(out, o.tail))
            }
        }))
        .await;
        Ok::<_, String>(per_container)
    }))
    .await;
    let mut lines = Vec::new();
    for h in per_host {
        match h {
            Ok(cs) => {
                for c in cs {
                    match c {
                        Ok(l) => lines.extend(l),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (merge(lines), errors)
}

/// How often `follow` looks for containers that appeared or came back.
pub const RELIST_EVERY: Duration = Duration::from_secs(2);

/// What `follow` sends: a line, or a message about a host or container.
#[derive(Debug)]
pub enum Event {
    Line(LogLine),
    Problem(String),
}

/// Follow every matching container until `stop` resolves, sending each line to `tx` as it
/// arrives. Starts with each container's recent lines as `o` says (like `collect`), merged.
pub async fn follow(
    cx: &Connected,
    sel: &Selector,
    o: &LogOptions,
    tx: mpsc::UnboundedSender<Event>,
    stop: impl std::future::Future<Output = ()>,
) {
    let started = now_unix();
    // Per container ID: the newest line time sent, and whether a reader runs now.
    let mut last: HashMap<String, i128> = HashMap::new();
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, i128)>();
    tokio::pin!(stop);
    let mut first = true;
    loop {
        let (hosts, errors) = sessions(cx, sel);
        if first {
            for e in errors {
                let _ = tx.send(Event::Problem(e));
            }
        }
        let mut initial = Vec::new();
        for s in hosts {
            let list = match sources(cx, s, sel).await {
                Ok(l) => l,
                Err(e) => {
                    if first {
                        let _ = tx.send(Event::Problem(e));
                    }
                    continue;
                }
            };
            let Ok(docker) = s.docker().await else {
                continue;
            };
            for src in list {
                let id = src.container.id.clone();
                if running.contains_key(&id) {
                    continue;
                }
                // A container that stopped before being seen: its old lines only on the first
                // pass (`collect` semantics), nothing to follow.
                if !src.container.state.is_up() && !first {
                    continue;
                }
                let after = last.get(&id).copied();
                let opts = if first {
                    docker_options(o, true, None)
                } else if let Some(ns) = after {
                    // Came back: from the second of the last line, duplicates dropped below.
                    docker_options(o, true, Some((ns / 1_000_000_000) as i64))
                } else {
                    // New since following began: everything it wrote.
                    LogsOptions {
                        tail: "all".into(),
                        ..docker_options(o, true, Some(started))
                    }
                };
                let label = src.label();
                let tail = if first { o.tail } else { None };
                let tx = tx.clone();
                let done = done_tx.clone();
                let docker = docker.clone();
                let cid = id.clone();
                let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Vec<LogLine>>();
                let handle = tokio::spawn(async move {
                    let mut newest = after.unwrap_or(i128::MIN);
                    let mut st = docker.logs(&cid, Some(opts));
                    // The first batch (what was there already) is merged across containers
                    // before printing; then lines go out as they come.
                    let mut backlog = Some(Vec::new());
                    let mut first_tx = Some(first_tx);
                    let backlog_until = tokio::time::Instant::now() + Duration::from_secs(1);
                    loop {
                        let next = if backlog.is_some() {
                            // The backlog ends at the first pause in the output, or after a
                            // second for a container that never pauses.
                            let wait = Duration::from_millis(300).min(
                                backlog_until
                                    .saturating_duration_since(tokio::time::Instant::now()),
                            );
                            match tokio::time::timeout(wait, st.next()).await {
                                Ok(n) => n,
                                Err(_) => {
                                    if let (Some(b), Some(ftx)) = (backlog.take(), first_tx.take())
                                    {
                                        let _ = ftx.send(keep_tail(b, tail));
                                    }
                                    continue;
                                }
                            }
                        } else {
                            st.next().await
                        };
                        let Some(Ok(f)) = next else { break };
                        let Some((stream, bytes)) = frame(f) else {
                            continue;
                        };
                        for l in split_chunk(&label, stream, &bytes) {
                            if l.nanos <= newest && l.nanos != 0 {
                                continue;
                            }
                            newest = newest.max(l.nanos);
                            match &mut backlog {
                                Some(b) => b.push(l),
                                None => {
                                    let _ = tx.send(Event::Line(l));
                                }
                            }
                        }
                    }
                    if let (Some(b), Some(ftx)) = (backlog.take(), first_tx.take()) {
                        let _ = ftx.send(keep_tail(b, tail));
                    }
                    let _ = done.send((cid, newest));
                });
                running.insert(id, handle);
                initial.push(first_rx);
            }
        }
        let mut batch = Vec::new();
        for rx in initial {
            if let Ok(b) = rx.await {
                batch.extend(b);
            }
        }
        for l in merge(batch) {
            let _ = tx.send(Event::Line(l));
        }
        first = false;
        let tick = tokio::time::sleep(RELIST_EVERY);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    for (_, h) in running.drain() {
                        h.abort();
                    }
                    return;
                }
                Some((id, newest)) = done_rx.recv() => {
                    running.remove(&id);
                    last.insert(id, newest);
                }
                _ = &mut tick => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_times_with_trimmed_fractions() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_time("1970-01-01T00:00:01.000000007Z"),
            Some(1_000_000_007)
        );
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn splits_chunks_into_marked_lines() {
        let chunk = b"2026-01-01T00:00:01.1Z out one\n2026-01-01T00:00:02Z out two\n";
        let lines = split_chunk("api#1@web2", Stream::Err, chunk);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].render(false), "api#1@web2 (err): out one");
        assert_eq!(
            lines[1].render(true),
            "2026-01-01T00:00:02Z api#1@web2 (err): out two"
        );
    }

    #[test]
    fn merges_by_time_across_sources() {
        let a = split_chunk(
            "a#1@h1",
            Stream::Out,
            b"1970-01-01T00:00:01Z a1\n1970-01-01T00:00:03Z a3\n",
        );
        let b = split_chunk("b#1@h2", Stream::Err, b"1970-01-01T00:00:02Z b2\n");
        let merged: Vec<String> = merge([a, b].concat())
            .iter()
            .map(|l| l.text.clone())
            .collect();
        assert_eq!(merged, ["a1", "b2", "a3"]);
    }

    #[test]
    fn asks_the_engine_for_the_chosen_streams() {
        let o = LogOptions {
            stream: Some(Stream::Err),
            tail: Some(5),
            ..Default::default()
        };
        let d = docker_options(&o, false, None);
        assert!(!d.stdout && d.stderr && d.timestamps);
        assert_eq!(
            d.tail, "all",
            "with a stream chosen the tail is cut locally"
        );
        let both = LogOptions {
            tail: Some(5),
            ..Default::default()
        };
        assert_eq!(docker_options(&both, false, None).tail, "5");
        let lines = split_chunk(
            "a#1@h",
            Stream::Out,
            b"1970-01-01T00:00:01Z 1\n1970-01-01T00:00:02Z 2\n",
        );
        assert_eq!(keep_tail(lines.clone(), Some(1))[0].text, "2");
        assert_eq!(keep_tail(lines, None).len(), 2);
        assert_eq!(
            docker_options(&LogOptions::default(), true, None).tail,
            "all"
        );
    }
}
