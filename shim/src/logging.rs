//! Logging to containerd: the shim writes to the `log` FIFO in its bundle,
//! which containerd reads and merges into its own log. Lines use containerd's
//! own format (`time="..." level=info msg="..." key=value`), so operators can
//! grep shim and containerd lines alike.
//!
//! The FIFO is written without blocking: the shim runs on one thread, and
//! a containerd that stops reading (stuck, or restarting) must not stop the
//! shim with it. A line that does not fit in the pipe is dropped and
//! counted; the next line that fits is preceded by how many were lost.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    sync::atomic::{AtomicU64, Ordering},
};

use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tracing::{
    field::{Field, Visit},
    Event, Level, Subscriber,
};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter},
    registry::LookupSpan,
};

/// Installs the subscriber. `debug` is the `-debug` flag containerd passes.
pub fn init(debug: bool) {
    let builder = logfmt(debug, LevelFilter::INFO);
    // containerd opens the reading end before it starts the shim.
    let fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    match fifo {
        Ok(fifo) => {
            let _ = builder.with_writer(FifoLog::new(fifo)).try_init();
        }
        Err(_) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}

/// Installs the subscriber of `delete`, which containerd runs after every
/// exit and after a shim's death. containerd reads its stderr and puts what
/// it says in its own log, so a cleanup that left something behind is seen
/// there; only warnings and errors go, since it runs on every exit.
pub fn init_cleanup(debug: bool) {
    let _ = logfmt(debug, LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The subscriber both modes use: logrus-like lines, at `level`, or at
/// debug level with containerd's `-debug`.
fn logfmt(
    debug: bool,
    level: LevelFilter,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    Logfmt,
    LevelFilter,
> {
    tracing_subscriber::fmt()
        .with_max_level(if debug { LevelFilter::DEBUG } else { level })
        .with_ansi(false)
        .event_format(Logfmt)
}

/// Writes to a pipe open with `O_NONBLOCK`, one line per write: a line of
/// at most `PIPE_BUF` bytes goes in whole or not at all, so lines never
/// interleave or tear, and a full pipe costs a dropped line, never a wait.
pub struct FifoLog {
    pipe: File,
    dropped: AtomicU64,
}

/// The most the kernel writes to a pipe at once (POSIX `PIPE_BUF`).
const PIPE_BUF: usize = 4096;

impl FifoLog {
    /// `pipe` must be open non-blocking.
    pub fn new(pipe: File) -> Self {
        FifoLog {
            pipe,
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// One write of one line; false when the pipe had no room for it.
    fn put(&self, line: &[u8]) -> bool {
        let line = truncate_line(line);
        match (&self.pipe).write(&line) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            // A reader that went away or any other error: nothing to wait for.
            Err(_) => false,
        }
    }

    fn write_line(&self, line: &[u8]) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let now = OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default();
            let notice = format!(
                "time=\"{now}\" level=warning msg=\"log lines dropped: containerd did not read the shim log\" dropped={dropped} runtime=io.containerd.brisk.v2\n"
            );
            if !self.put(notice.as_bytes()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::inc(&crate::metrics::FIGURES.log_lines_dropped);
                return;
            }
            self.dropped.fetch_sub(dropped, Ordering::Relaxed);
        }
        if !self.put(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::inc(&crate::metrics::FIGURES.log_lines_dropped);
        }
    }
}

/// A line cut to what the pipe takes in one piece, still ending in a newline.
fn truncate_line(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if line.len() <= PIPE_BUF {
        return line.into();
    }
    let mut cut = line[..PIPE_BUF - 4].to_vec();
    cut.extend_from_slice("…\n".as_bytes());
    cut.into()
}

/// What the formatter writes one event into.
pub struct LineWriter<'a>(&'a FifoLog);

impl Write for LineWriter<'_> {
    /// The formatter hands over a whole line at once; it always "fits".
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FifoLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

/// containerd's (logrus's) text format.
pub struct Logfmt;

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Quotes a value the way logrus does: bare when it is a simple token.
fn quote(v: &str) -> String {
    let simple = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+:".contains(c));
    if simple {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.msg = v;
        } else {
            self.rest.push((field.name(), v));
        }
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        write!(
            w,
            "time=\"{now}\" level={} msg={}",
            level_name(event.metadata().level()),
            quote(&fields.msg)
        )?;
        for (k, v) in fields.rest {
            write!(w, " {k}={}", quote(&v))?;
        }
        // The fields of the spans the event is in, outermost first: a Task
        // API request's `trace_id` (task_service/ttrpc.rs). They hold hex
        // ids only, formatted `key=value` already by the fields formatter.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if !f.fields.is_empty() {
                        write!(w, " {}", f.fields)?;
                    }
                }
            }
        }
        writeln!(w, " runtime=io.containerd.brisk.v2")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{io::Read, os::fd::OwnedFd};

    use super::*;

    fn pipe() -> (File, File) {
        let (r, w): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn a_full_pipe_drops_lines_and_never_blocks() {
        let (mut r, w) = pipe();
        let log = FifoLog::new(w);
        let line = format!("{}\n", "x".repeat(199));
        // Far more than the pipe holds (64 KiB by default): none blocks.
        let started = std::time::Instant::now();
        for _ in 0..2000 {
            log.make_writer().write_all(line.as_bytes()).unwrap();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let dropped = log.dropped();
        assert!(dropped > 0, "nothing dropped");
        // containerd reads again: the next line says what was lost.
        let mut buf = vec![0u8; 1 << 20];
        let n = r.read(&mut buf).unwrap();
        assert_eq!(n % line.len(), 0, "a torn line in {n} bytes");
        log.make_writer().write_all(b"after\n").unwrap();
        let n = r.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains(&format!("dropped={dropped}")), "{text}");
        assert!(text.ends_with("after\n"), "{text}");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_long_line_is_cut_to_one_pipe_write() {
        let (mut r, w) = pipe();
        let log = FifoLog::new(w);
        let long = format!("{}\n", "y".repeat(10_000));
        log.make_writer().write_all(long.as_bytes()).unwrap();
        let mut buf = vec![0u8; 20_000];
        let n = r.read(&mut buf).unwrap();
        assert!(n <= PIPE_BUF, "{n}");
        assert!(buf[..n].ends_with("…\n".as_bytes()));
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// A subscriber like the shim's, at info level, writing here.
        pub(crate) fn subscriber(&self) -> impl Subscriber + Send + Sync {
            let me = self.clone();
            logfmt(false, LevelFilter::INFO)
                .with_writer(move || me.clone())
                .finish()
        }
    }

    #[test]
    fn span_fields_follow_the_event_fields() {
        let out = Captured::default();
        tracing::subscriber::with_default(out.subscriber(), || {
            tracing::info!(id = "c1", "outside");
            let span = tracing::info_span!(
                "request",
                trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = %"00f067aa0ba902b7"
            );
            span.in_scope(|| tracing::info!(id = "c1", "inside"));
        });
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("msg=outside id=c1 runtime="), "{text}");
        assert!(!lines[0].contains("trace_id"), "{text}");
        assert!(
            lines[1].contains(
                "msg=inside id=c1 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 runtime=io.containerd.brisk.v2"
            ),
            "{text}"
        );
    }

    #[test]
    fn values_are_quoted_like_logrus() {
        assert_eq!(quote("abc-1.2"), "abc-1.2");
        assert_eq!(quote("two words"), "\"two words\"");
        assert_eq!(quote(""), "\"\"");
    }
}
