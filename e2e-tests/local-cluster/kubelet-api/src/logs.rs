//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log file as the
//! kubelet serves it to `kubectl logs` (through the apiserver).
//!
//! Query parameters and their errors follow the kubelet (`getContainerLogs` in
//! `pkg/kubelet/server/server.go`, `k8s.io/cri-client/pkg/logs`): `follow`, `previous`,
//! `timestamps`, `tailLines` (legacy `tail`), `limitBytes`, `sinceSeconds`/`sinceTime`.
//! Our log files are plain lines without per-line times (CRI files carry one per line),
//! so a line's time is when we first saw it: lines already in the file when the request
//! came get the file's modification time then (an upper bound), later lines the time we
//! read them. `timestamps` prints that time; `sinceSeconds`/`sinceTime` compare with it.
//! With `follow`, lines go out only once complete (as the kubelet does); the stream ends
//! when the client leaves, the server shuts down, the pod is gone, the log path switches
//! to a new run, or [`PodDirectory::container_running`] turns false and the file is
//! drained.

use std::convert::Infallible;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::PodDirectory;
use crate::http_util::{self, Body};

/// How often a followed log is checked for new bytes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Output is sent in chunks of about this size.
const CHUNK: usize = 32 * 1024;

/// Parsed and validated query parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Keep streaming appended lines.
    pub follow: bool,
    /// The previous (terminated) run's log.
    pub previous: bool,
    /// Prefix lines with an RFC 3339 time (9 fractional digits).
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Only lines from this time on.
    pub since: Option<Since>,
}

/// Lower time bound of the lines to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `sinceSeconds`: relative to the request.
    Seconds(i64),
    /// `sinceTime`: absolute.
    Time(Timestamp),
}

impl Since {
    /// The earliest time a line may have.
    pub fn cutoff(self, now: Timestamp) -> Timestamp {
        match self {
            Self::Time(t) => t,
            Self::Seconds(s) => now
                .checked_sub(SignedDuration::from_secs(s))
                .unwrap_or(Timestamp::MIN),
        }
    }
}

/// A request the kubelet refuses, with its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: StatusCode,
    /// Body text.
    pub message: String,
}

fn decode_error() -> Rejection {
    Rejection {
        status: StatusCode::BAD_REQUEST,
        message: r#"{"message": "Unable to decode query."}"#.into(),
    }
}

fn invalid_request() -> Rejection {
    Rejection {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: r#"{"message": "Invalid request."}"#.into(),
    }
}

/// apimachinery's `Convert_Slice_string_To_bool`: only absent, `0` and `false` are false.
fn query_bool(query: &[(String, String)], key: &str) -> bool {
    match http_util::first(query, key) {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

fn query_i64(query: &[(String, String)], key: &str) -> Result<Option<i64>, Rejection> {
    http_util::first(query, key)
        .map(|v| v.parse::<i64>().map_err(|_| decode_error()))
        .transpose()
}

/// Parses and validates the query like the kubelet: undecodable → 400, invalid
/// (negative `tailLines`, `limitBytes` < 1, `sinceSeconds` < 1, both since forms) → 422,
/// a `stream` other than `All` → 400 (the split-streams feature gate is off).
pub fn parse_options(query: &[(String, String)]) -> Result<LogOptions, Rejection> {
    let mut tail = query_i64(query, "tailLines")?;
    // Backwards compatibility: `tail`, where "all" means no limit.
    match http_util::first(query, "tail") {
        Some("all") => tail = None,
        Some(t) if !t.is_empty() => tail = Some(t.parse().map_err(|_| decode_error())?),
        _ => {}
    }
    let limit = query_i64(query, "limitBytes")?;
    let since_seconds = query_i64(query, "sinceSeconds")?;
    let since_time = match http_util::first(query, "sinceTime") {
        None | Some("") | Some("null") => None,
        Some(t) => Some(t.parse::<Timestamp>().map_err(|_| decode_error())?),
    };
    if tail.is_some_and(|t| t < 0)
        || limit.is_some_and(|l| l < 1)
        || (since_seconds.is_some() && since_time.is_some())
        || since_seconds.is_some_and(|s| s < 1)
    {
        return Err(invalid_request());
    }
    if let Some(stream) = http_util::first(query, "stream")
        && stream != "All"
    {
        return Err(Rejection {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "unable to return the given log stream: {stream:?}. Please enable PodLogsQuerySplitStreams feature gate in kubelet"
            ),
        });
    }
    Ok(LogOptions {
        follow: query_bool(query, "follow"),
        previous: query_bool(query, "previous"),
        timestamps: query_bool(query, "timestamps"),
        tail_lines: tail.map(|t| t.unsigned_abs()),
        limit_bytes: limit.map(|l| l.unsigned_abs()),
        since: since_seconds
            .map(Since::Seconds)
            .or(since_time.map(Since::Time)),
    })
}

/// Offset where the last `lines` lines of `file` start. A final line without a newline
/// counts as a line; `lines` = 0 gives the end of the file.
pub fn tail_start<R: Read + Seek>(file: &mut R, lines: u64) -> io::Result<u64> {
    const BLOCK: u64 = 8 * 1024;
    let size = file.seek(SeekFrom::End(0))?;
    if lines == 0 || size == 0 {
        return Ok(size);
    }
    // The newline that ends the last line does not start another one.
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(size - 1))?;
    file.read_exact(&mut last)?;
    let mut end = if last[0] == b'\n' { size - 1 } else { size };
    let mut found = 0u64;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let len = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..len])?;
        for (i, b) in buf[..len].iter().enumerate().rev() {
            if *b == b'\n' {
                found += 1;
                if found == lines {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// The kubelet's fixed-width output time format (`RFC3339NanoFixed`, UTC).
pub fn format_timestamp(ts: Timestamp) -> String {
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    )
}

/// Whether more output may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Keep going.
    More,
    /// A line or byte limit was reached: end the response.
    Done,
}

/// Applies `since`, `timestamps`, the line limit (non-follow `tailLines`) and
/// `limitBytes` to lines, in the kubelet's order: skip old lines, prefix, cut at the
/// byte limit.
#[derive(Debug, Clone)]
pub struct LineEmitter {
    timestamps: bool,
    since: Option<Timestamp>,
    bytes_left: Option<u64>,
    lines_left: Option<u64>,
}

impl LineEmitter {
    /// An emitter for a request made at `now`.
    pub fn new(opts: &LogOptions, now: Timestamp) -> Self {
        Self {
            timestamps: opts.timestamps,
            since: opts.since.map(|s| s.cutoff(now)),
            bytes_left: opts.limit_bytes,
            lines_left: opts.tail_lines.filter(|_| !opts.follow),
        }
    }

    /// Appends one line (with its newline, if it has one) seen at `ts` to `out`.
    pub fn line(&mut self, line: &[u8], ts: Timestamp, out: &mut BytesMut) -> Emit {
        if self.done() {
            return Emit::Done;
        }
        if self.since.is_some_and(|since| ts < since) {
            return Emit::More;
        }
        let mut bytes = Vec::with_capacity(line.len() + 31);
        if self.timestamps {
            bytes.extend_from_slice(format_timestamp(ts).as_bytes());
            bytes.push(b' ');
        }
        bytes.extend_from_slice(line);
        if let Some(left) = self.bytes_left.as_mut() {
            let take = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            bytes.truncate(take);
            *left -= take as u64;
        }
        out.extend_from_slice(&bytes);
        if let Some(lines) = self.lines_left.as_mut() {
            *lines = lines.saturating_sub(1);
        }
        if self.done() { Emit::Done } else { Emit::More }
    }

    fn done(&self) -> bool {
        self.bytes_left == Some(0) || self.lines_left == Some(0)
    }
}

/// Names of the container whose log is served.
#[derive(Debug, Clone)]
pub(crate) struct ContainerRef {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Handles a containerLogs request after routing.
pub(crate) fn handle(
    query: Option<&str>,
    pods: &Arc<dyn PodDirectory>,
    target: ContainerRef,
    shutdown: CancellationToken,
) -> Response<Body> {
    let Some(query) = http_util::parse_query(query) else {
        let r = decode_error();
        return http_util::text(r.status, r.message);
    };
    let opts = match parse_options(&query) {
        Ok(opts) => opts,
        Err(r) => return http_util::text(r.status, r.message),
    };
    let ContainerRef {
        namespace,
        pod,
        container,
    } = &target;
    let path = if opts.previous {
        match pods.previous_container_log(namespace, pod, container) {
            Some(p) => p,
            None => {
                return http_util::text(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                );
            }
        }
    } else {
        match pods.container_log(namespace, pod, container) {
            Some(p) => p,
            None if pods.pod_ip(namespace, pod).is_none() => {
                return http_util::text(
                    StatusCode::NOT_FOUND,
                    format!("pod {pod:?} does not exist (namespace {namespace:?})"),
                );
            }
            None => {
                return http_util::text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "container {container:?} not found in pod {pod:?} (namespace {namespace:?})"
                    ),
                );
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let source = LogSource {
        pods: pods.clone(),
        target,
        path,
        opts,
    };
    tokio::spawn(async move {
        if let Err(e) = source.stream(&tx, &shutdown).await {
            warn!(error = %e, path = %source.path.display(), "containerLogs: reading the log failed");
        }
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A response body fed by the log reader task; dropping it (client gone) makes the
/// task's next send fail, which stops it.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Client went away or the server is shutting down.
struct Stop;

struct LogSource {
    pods: Arc<dyn PodDirectory>,
    target: ContainerRef,
    path: PathBuf,
    opts: LogOptions,
}

/// The open log file and where we are in it.
struct Cursor {
    file: tokio::fs::File,
    inode: u64,
    pos: u64,
    /// Bytes of an incomplete last line.
    partial: Vec<u8>,
    /// The last bytes read (up to [`FINGERPRINT`]), to notice a file rewritten in place
    /// that has already grown past our position again.
    seen: Vec<u8>,
}

/// How many of the last bytes read are compared to detect an in-place rewrite.
const FINGERPRINT: usize = 64;

impl Cursor {
    fn remember(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(FINGERPRINT);
        self.seen.extend_from_slice(&bytes[bytes.len() - keep..]);
        let excess = self.seen.len().saturating_sub(FINGERPRINT);
        self.seen.drain(..excess);
    }

    /// Whether the file at our position still holds what we read before it
    /// (`copytruncate` and `>`-style rewrites keep the inode but not the content).
    async fn same_content(&mut self) -> io::Result<bool> {
        let k = self.seen.len() as u64;
        if k == 0 {
            return Ok(true);
        }
        self.file.seek(SeekFrom::Start(self.pos - k)).await?;
        let mut now = vec![0u8; self.seen.len()];
        let same = match self.file.read_exact(&mut now).await {
            Ok(_) => now == self.seen,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e),
        };
        self.file.seek(SeekFrom::Start(self.pos)).await?;
        Ok(same)
    }
}

impl LogSource {
    async fn stream(
        &self,
        tx: &mpsc::Sender<Bytes>,
        shutdown: &CancellationToken,
    ) -> io::Result<()> {
        let now = Timestamp::now();
        let mut emitter = LineEmitter::new(&self.opts, now);
        let follow = self.opts.follow && !self.opts.previous;
        let mut out = BytesMut::new();
        let Some((mut cur, mut initial_size, initial_time)) =
            self.open_initial(follow, tx, shutdown).await?
        else {
            return Ok(());
        };
        loop {
            if !self
                .drain(
                    &mut cur,
                    initial_size,
                    initial_time,
                    &mut emitter,
                    &mut out,
                    tx,
                )
                .await?
            {
                return Ok(());
            }
            if !follow {
                break;
            }
            // Wait for more, then decide whether this run can still grow.
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = shutdown.cancelled() => return Ok(()),
                () = tx.closed() => return Ok(()),
            }
            let ContainerRef {
                namespace,
                pod,
                container,
            } = &self.target;
            let still_current = self
                .pods
                .container_log(namespace, pod, container)
                .as_deref()
                == Some(self.path.as_path());
            let running = still_current && self.pods.container_running(namespace, pod, container);
            let replaced = match tokio::fs::metadata(&self.path).await {
                Ok(meta) => {
                    meta.ino() != cur.inode || meta.len() < cur.pos || !cur.same_content().await?
                }
                Err(_) => false,
            };
            if replaced {
                // Rotated or truncated in place: start over on the new content.
                debug!(path = %self.path.display(), "containerLogs: log file replaced, reopening");
                if let Some(c) = open(&self.path, 0).await? {
                    cur = c;
                    initial_size = 0;
                }
            }
            if !running {
                // Drain what the exited run wrote last, including an unterminated line.
                if !self
                    .drain(
                        &mut cur,
                        initial_size,
                        initial_time,
                        &mut emitter,
                        &mut out,
                        tx,
                    )
                    .await?
                {
                    return Ok(());
                }
                break;
            }
        }
        if !cur.partial.is_empty() {
            let _ = emitter.line(
                &cur.partial,
                line_time(cur.pos, initial_size, initial_time),
                &mut out,
            );
        }
        let _ = send(tx, &mut out).await;
        Ok(())
    }

    /// Opens the log at the tail position. A missing file is an empty log; when
    /// following, we wait for it to appear.
    async fn open_initial(
        &self,
        follow: bool,
        tx: &mpsc::Sender<Bytes>,
        shutdown: &CancellationToken,
    ) -> io::Result<Option<(Cursor, u64, Timestamp)>> {
        loop {
            match tokio::fs::metadata(&self.path).await {
                Ok(meta) => {
                    let mtime = meta
                        .modified()
                        .ok()
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or_else(Timestamp::now);
                    let start = match self.opts.tail_lines {
                        Some(n) => {
                            let path = self.path.clone();
                            tokio::task::spawn_blocking(move || {
                                let mut f = std::fs::File::open(path)?;
                                tail_start(&mut f, n)
                            })
                            .await
                            .map_err(io::Error::other)??
                        }
                        None => 0,
                    };
                    return match open(&self.path, start).await? {
                        Some(cur) => Ok(Some((cur, meta.len(), mtime))),
                        None => Ok(None),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !follow {
                        return Ok(None);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                        () = shutdown.cancelled() => return Ok(None),
                        () = tx.closed() => return Ok(None),
                    }
                    let ContainerRef {
                        namespace,
                        pod,
                        container,
                    } = &self.target;
                    if self
                        .pods
                        .container_log(namespace, pod, container)
                        .as_deref()
                        != Some(self.path.as_path())
                    {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and sends everything up to the current end of file; `false` when the
    /// response is complete (a limit was reached) or the client is gone.
    async fn drain(
        &self,
        cur: &mut Cursor,
        initial_size: u64,
        initial_time: Timestamp,
        emitter: &mut LineEmitter,
        out: &mut BytesMut,
        tx: &mpsc::Sender<Bytes>,
    ) -> io::Result<bool> {
        loop {
            let read = self
                .read_available(cur, initial_size, initial_time, emitter, out)
                .await?;
            if send(tx, out).await.is_err() {
                return Ok(false);
            }
            match read {
                ReadStop::Done => return Ok(false),
                ReadStop::Full => {}
                ReadStop::Eof => return Ok(true),
            }
        }
    }

    /// Reads complete lines into `out` until the end of file or about [`CHUNK`] bytes
    /// of output.
    async fn read_available(
        &self,
        cur: &mut Cursor,
        initial_size: u64,
        initial_time: Timestamp,
        emitter: &mut LineEmitter,
        out: &mut BytesMut,
    ) -> io::Result<ReadStop> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = cur.file.read(&mut buf).await?;
            if n == 0 {
                return Ok(ReadStop::Eof);
            }
            let chunk_start = cur.pos;
            cur.pos += n as u64;
            cur.remember(&buf[..n]);
            let mut line_start = 0usize;
            for (i, b) in buf[..n].iter().enumerate() {
                if *b != b'\n' {
                    continue;
                }
                let end_offset = chunk_start + i as u64 + 1;
                let ts = line_time(end_offset, initial_size, initial_time);
                let emit = if cur.partial.is_empty() {
                    emitter.line(&buf[line_start..=i], ts, out)
                } else {
                    cur.partial.extend_from_slice(&buf[line_start..=i]);
                    let line = std::mem::take(&mut cur.partial);
                    emitter.line(&line, ts, out)
                };
                line_start = i + 1;
                if emit == Emit::Done {
                    return Ok(ReadStop::Done);
                }
            }
            cur.partial.extend_from_slice(&buf[line_start..n]);
            if out.len() >= CHUNK {
                // Keep memory flat for big files; the caller's send applies backpressure.
                return Ok(ReadStop::Full);
            }
        }
    }
}

/// Where a read of the log stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadStop {
    /// At the current end of the file.
    Eof,
    /// Enough output for one chunk; more may be there.
    Full,
    /// A line or byte limit was reached.
    Done,
}

/// Lines that were in the file when the request came get its modification time.
fn line_time(end_offset: u64, initial_size: u64, initial_time: Timestamp) -> Timestamp {
    if end_offset <= initial_size {
        initial_time
    } else {
        Timestamp::now()
    }
}

async fn open(path: &Path, pos: u64) -> io::Result<Option<Cursor>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let inode = file.metadata().await?.ino();
    file.seek(SeekFrom::Start(pos)).await?;
    Ok(Some(Cursor {
        file,
        inode,
        pos,
        partial: Vec::new(),
        seen: Vec::new(),
    }))
}

async fn send(tx: &mpsc::Sender<Bytes>, out: &mut BytesMut) -> Result<(), Stop> {
    if out.is_empty() {
        return Ok(());
    }
    tx.send(out.split().freeze()).await.map_err(|_| Stop)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor as IoCursor;

    use rstest::rstest;

    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        http_util::parse_query(Some(s)).expect("query")
    }

    #[rstest]
    #[case::nothing("", Ok(LogOptions::default()))]
    #[case::follow_true("follow=true", Ok(LogOptions { follow: true, ..Default::default() }))]
    #[case::bool_empty_value_is_true("timestamps=", Ok(LogOptions { timestamps: true, ..Default::default() }))]
    #[case::bool_zero_is_false("follow=0&previous=FALSE", Ok(LogOptions::default()))]
    #[case::tail_and_limit("tailLines=5&limitBytes=100", Ok(LogOptions { tail_lines: Some(5), limit_bytes: Some(100), ..Default::default() }))]
    #[case::legacy_tail("tail=3", Ok(LogOptions { tail_lines: Some(3), ..Default::default() }))]
    #[case::legacy_tail_all_overrides("tailLines=3&tail=all", Ok(LogOptions::default()))]
    #[case::tail_zero_is_valid("tailLines=0", Ok(LogOptions { tail_lines: Some(0), ..Default::default() }))]
    #[case::since_seconds("sinceSeconds=10", Ok(LogOptions { since: Some(Since::Seconds(10)), ..Default::default() }))]
    #[case::since_time_with_offset("sinceTime=2024-01-02T15%3A04%3A05%2B01%3A00", Ok(LogOptions { since: Some(Since::Time("2024-01-02T14:04:05Z".parse().expect("ts"))), ..Default::default() }))]
    #[case::stream_all_ok("stream=All", Ok(LogOptions::default()))]
    #[case::negative_tail("tailLines=-1", Err(StatusCode::UNPROCESSABLE_ENTITY))]
    #[case::zero_limit("limitBytes=0", Err(StatusCode::UNPROCESSABLE_ENTITY))]
    #[case::zero_since("sinceSeconds=0", Err(StatusCode::UNPROCESSABLE_ENTITY))]
    #[case::both_since(
        "sinceSeconds=1&sinceTime=2024-01-02T15%3A04%3A05Z",
        Err(StatusCode::UNPROCESSABLE_ENTITY)
    )]
    #[case::tail_not_a_number("tailLines=ten", Err(StatusCode::BAD_REQUEST))]
    #[case::bad_since_time("sinceTime=yesterday", Err(StatusCode::BAD_REQUEST))]
    #[case::stream_stdout("stream=Stdout", Err(StatusCode::BAD_REQUEST))]
    fn query_parsing(#[case] query: &str, #[case] want: Result<LogOptions, StatusCode>) {
        assert_eq!(parse_options(&q(query)).map_err(|r| r.status), want);
    }

    #[rstest]
    #[case::all_of_three("a\nb\nc\n", 3, "a\nb\nc\n")]
    #[case::last_one("a\nb\nc\n", 1, "c\n")]
    #[case::last_two("a\nb\nc\n", 2, "b\nc\n")]
    #[case::more_than_there_are("a\nb\n", 10, "a\nb\n")]
    #[case::zero_lines("a\nb\n", 0, "")]
    #[case::unterminated_last_line_counts("a\nb\nc", 1, "c")]
    #[case::unterminated_two("a\nb\nc", 2, "b\nc")]
    #[case::empty_lines("\n\n\n", 2, "\n\n")]
    #[case::empty_file("", 3, "")]
    #[case::single_line_no_newline("only", 1, "only")]
    fn tail_offsets(#[case] content: &str, #[case] lines: u64, #[case] want: &str) {
        let mut f = IoCursor::new(content.as_bytes().to_vec());
        let start = tail_start(&mut f, lines).expect("tail");
        assert_eq!(&content[start as usize..], want);
    }

    #[test]
    fn tail_spans_read_blocks() {
        // Lines longer than the 8 KiB scan block, and many of them.
        let line = format!("{}\n", "x".repeat(10_000));
        let content: String = (0..5).map(|i| format!("{i}{line}")).collect();
        let mut f = IoCursor::new(content.as_bytes().to_vec());
        let start = tail_start(&mut f, 2).expect("tail") as usize;
        assert!(content[start..].starts_with('3'));
        assert_eq!(content[start..].lines().count(), 2);
    }

    #[rstest]
    #[case::epoch("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000000Z")]
    #[case::nanos("2024-02-29T23:59:59.123456789Z", "2024-02-29T23:59:59.123456789Z")]
    #[case::offset_converted_to_utc(
        "2024-01-02T15:04:05.5+01:00",
        "2024-01-02T14:04:05.500000000Z"
    )]
    fn timestamps_are_fixed_width_utc(#[case] ts: &str, #[case] want: &str) {
        assert_eq!(format_timestamp(ts.parse().expect("ts")), want);
    }

    fn run(opts: LogOptions, lines: &[(&str, &str)]) -> (String, Emit) {
        let now: Timestamp = "2024-01-01T00:01:00Z".parse().expect("ts");
        let mut e = LineEmitter::new(&opts, now);
        let mut out = BytesMut::new();
        let mut last = Emit::More;
        for (line, ts) in lines {
            last = e.line(line.as_bytes(), ts.parse().expect("ts"), &mut out);
        }
        (String::from_utf8(out.to_vec()).expect("utf8"), last)
    }

    const T0: &str = "2024-01-01T00:00:00Z";
    const T1: &str = "2024-01-01T00:00:59Z";

    #[rstest]
    #[case::plain(LogOptions::default(), "a\nb\n", Emit::More)]
    #[case::limit_cuts_mid_line(LogOptions { limit_bytes: Some(3), ..Default::default() }, "a\nb", Emit::Done)]
    #[case::limit_exact(LogOptions { limit_bytes: Some(4), ..Default::default() }, "a\nb\n", Emit::Done)]
    #[case::tail_stops_after_n_lines(LogOptions { tail_lines: Some(1), ..Default::default() }, "a\n", Emit::Done)]
    #[case::tail_with_follow_does_not_limit(LogOptions { tail_lines: Some(1), follow: true, ..Default::default() }, "a\nb\n", Emit::More)]
    #[case::since_skips_old_lines(LogOptions { since: Some(Since::Seconds(30)), ..Default::default() }, "b\n", Emit::More)]
    #[case::timestamps(LogOptions { timestamps: true, ..Default::default() }, "2024-01-01T00:00:00.000000000Z a\n2024-01-01T00:00:59.000000000Z b\n", Emit::More)]
    #[case::timestamps_count_towards_limit(LogOptions { timestamps: true, limit_bytes: Some(10), ..Default::default() }, "2024-01-01", Emit::Done)]
    fn line_emitter(#[case] opts: LogOptions, #[case] want: &str, #[case] last: Emit) {
        assert_eq!(
            run(opts, &[("a\n", T0), ("b\n", T1)]),
            (want.to_owned(), last)
        );
    }

    /// The I/O side: a real file, a fake pod directory, the response body read frame by
    /// frame as hyper would.
    mod streaming {
        use std::collections::HashMap;
        use std::net::{IpAddr, Ipv4Addr};
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicBool, Ordering};

        use http_body_util::BodyExt;

        use super::*;

        #[derive(Default)]
        struct Dir {
            logs: Mutex<HashMap<String, PathBuf>>,
            running: AtomicBool,
        }

        impl PodDirectory for Dir {
            fn container_log(&self, _: &str, pod: &str, _: &str) -> Option<PathBuf> {
                self.logs.lock().ok()?.get(pod).cloned()
            }
            fn pod_ip(&self, _: &str, pod: &str) -> Option<IpAddr> {
                (pod != "ghost").then_some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            fn container_running(&self, _: &str, _: &str, _: &str) -> bool {
                self.running.load(Ordering::SeqCst)
            }
        }

        fn setup(content: Option<&str>) -> (tempfile::TempDir, PathBuf, Arc<Dir>) {
            let tmp = tempfile::tempdir().expect("tempdir");
            let path = tmp.path().join("c.log");
            if let Some(c) = content {
                std::fs::write(&path, c).expect("write");
            }
            let dir = Arc::new(Dir::default());
            dir.logs
                .lock()
                .expect("lock")
                .insert("p".into(), path.clone());
            dir.running.store(true, Ordering::SeqCst);
            (tmp, path, dir)
        }

        fn request(dir: &Arc<Dir>, pod: &str, query: &str) -> Response<Body> {
            let pods: Arc<dyn PodDirectory> = dir.clone();
            let target = ContainerRef {
                namespace: "ns".into(),
                pod: pod.into(),
                container: "c".into(),
            };
            handle(Some(query), &pods, target, CancellationToken::new())
        }

        /// Reads body frames until `want` has been seen in full (bounded wait).
        async fn read_until(body: &mut Body, got: &mut String, want: &str) {
            tokio::time::timeout(Duration::from_secs(20), async {
                while !got.contains(want) {
                    let frame = body
                        .frame()
                        .await
                        .expect("body ended early")
                        .expect("frame");
                    got.push_str(&String::from_utf8_lossy(&frame.into_data().expect("data")));
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never saw {want:?}, got {got:?}"));
        }

        async fn rest(body: Body) -> String {
            let bytes = tokio::time::timeout(Duration::from_secs(20), body.collect())
                .await
                .expect("body ends")
                .expect("infallible")
                .to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        }

        #[tokio::test]
        async fn plain_request_returns_the_file_and_ends() {
            let (_tmp, _path, dir) = setup(Some("a\nb\nno newline"));
            let resp = request(&dir, "p", "tailLines=2");
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(rest(resp.into_body()).await, "b\nno newline");
        }

        #[tokio::test]
        async fn big_files_are_sent_whole_in_chunks() {
            let line = format!("{}\n", "y".repeat(999));
            let content = line.repeat(1000); // 1 MB, many output chunks
            let (_tmp, _path, dir) = setup(Some(&content));
            assert_eq!(rest(request(&dir, "p", "").into_body()).await, content);
            let tail = rest(request(&dir, "p", "tailLines=100&limitBytes=50000").into_body()).await;
            assert_eq!(tail, line.repeat(50)[..50_000]);
        }

        #[rstest]
        #[case::unknown_pod("ghost", "", StatusCode::NOT_FOUND)]
        #[case::unknown_container("nolog", "", StatusCode::NOT_FOUND)]
        #[case::no_previous_run("p", "previous=true", StatusCode::BAD_REQUEST)]
        #[case::invalid_query("p", "limitBytes=0", StatusCode::UNPROCESSABLE_ENTITY)]
        #[case::undecodable_query("p", "tailLines=%zz", StatusCode::BAD_REQUEST)]
        #[tokio::test]
        async fn errors(#[case] pod: &str, #[case] query: &str, #[case] status: StatusCode) {
            let (_tmp, _path, dir) = setup(Some("x\n"));
            assert_eq!(request(&dir, pod, query).status(), status);
        }

        #[tokio::test]
        async fn follow_streams_appends_survives_truncation_and_ends_when_the_container_stops() {
            let (_tmp, path, dir) = setup(Some("one\n"));
            let mut body = request(&dir, "p", "follow=true").into_body();
            let mut got = String::new();
            read_until(&mut body, &mut got, "one\n").await;
            // Partial lines wait for their newline.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            std::io::Write::write_all(&mut f, b"tw").expect("write");
            std::io::Write::write_all(&mut f, b"o\n").expect("write");
            read_until(&mut body, &mut got, "two\n").await;
            // copytruncate-style rotation: the new content is streamed from its start.
            std::fs::write(&path, "after truncation\n").expect("truncate");
            read_until(&mut body, &mut got, "after truncation\n").await;
            std::io::Write::write_all(
                &mut std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .expect("open"),
                b"last",
            )
            .expect("write");
            dir.running.store(false, Ordering::SeqCst);
            got.push_str(&rest(body).await);
            assert_eq!(got, "one\ntwo\nafter truncation\nlast");
        }

        #[tokio::test]
        async fn follow_waits_for_a_log_file_that_does_not_exist_yet() {
            let (_tmp, path, dir) = setup(None);
            let mut body = request(&dir, "p", "follow=true&timestamps=true").into_body();
            std::fs::write(&path, "late\n").expect("write");
            let mut got = String::new();
            read_until(&mut body, &mut got, "late\n").await;
            assert!(got.ends_with("Z late\n"), "{got}");
            // The pod goes away: the follow ends.
            dir.logs.lock().expect("lock").clear();
            assert_eq!(rest(body).await, "");
        }
    }

    #[test]
    fn since_seconds_cutoff_is_relative_to_now() {
        let now: Timestamp = "2024-01-01T00:01:00Z".parse().expect("ts");
        assert_eq!(
            Since::Seconds(60).cutoff(now),
            "2024-01-01T00:00:00Z".parse::<Timestamp>().expect("ts")
        );
        assert_eq!(Since::Seconds(i64::MAX).cutoff(now), Timestamp::MIN);
    }
}
