//! Logging to containerd: the shim writes to the `log` FIFO in its bundle,
//! which containerd reads and merges into its own log. Lines use containerd's
//! own format (`time="..." level=info msg="..." key=value`), so operators can
//! grep shim and containerd lines alike.

use std::{fmt, fs::OpenOptions, sync::Mutex};

use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tracing::{
    field::{Field, Visit},
    Event, Level, Subscriber,
};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// Installs the subscriber. `debug` is the `-debug` flag containerd passes.
pub fn init(debug: bool) {
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .event_format(Logfmt);
    // containerd opens the reading end before it starts the shim.
    match OpenOptions::new().write(true).open("log") {
        Ok(fifo) => {
            let _ = builder.with_writer(Mutex::new(fifo)).try_init();
        }
        Err(_) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
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
        _ctx: &FmtContext<'_, S, N>,
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
        writeln!(w, " runtime=io.containerd.brisk.v2")
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn values_are_quoted_like_logrus() {
        assert_eq!(quote("abc-1.2"), "abc-1.2");
        assert_eq!(quote("two words"), "\"two words\"");
        assert_eq!(quote(""), "\"\"");
    }
}
