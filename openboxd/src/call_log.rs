//! How much a call asked to be told (`-q`, `-v`): what openboxd does for it knows, and
//! with `-v` openbox's own log lines from serving it — which node, which way, how long —
//! go to the caller's stderr too, as they happen.

use std::future::Future;
use std::io::Write as _;
use std::sync::mpsc::{SyncSender, sync_channel};

use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::{Context, Layer};

tokio::task_local! {
    static CALL: Settings;
}

/// Lines a verbose call may have waiting for its caller to read them; past that, new
/// ones are dropped (a caller who stops reading never holds openboxd up).
const BACKLOG: usize = 256;

#[derive(Clone)]
struct Settings {
    verbosity: i8,
    /// Lines for the caller's stderr, written by a thread of their own, when they go there.
    lines: Option<SyncSender<String>>,
    /// Whether warnings and errors go there too (not when the caller's stderr already gets
    /// them from this process's own log, as for a call run without openboxd).
    warnings: bool,
}

/// Runs `call` knowing its `verbosity` (-1 quiet, 0 as usual, 1 and more verbose); when
/// verbose, the events it logs are written to `stderr` as well (warnings and errors only
/// with `warnings`).
pub async fn scope<F: Future>(verbosity: i8, stderr: Option<std::fs::File>, warnings: bool, call: F) -> F::Output {
    let (lines, writer) = match stderr.filter(|_| verbosity > 0) {
        Some(mut file) => {
            let (tx, rx) = sync_channel::<String>(BACKLOG);
            // Blocking writes, off the runtime's own threads, until the call is done.
            let writer = tokio::task::spawn_blocking(move || {
                for line in rx {
                    if file.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
            });
            (Some(tx), Some(writer))
        }
        None => (None, None),
    };
    let done = CALL.scope(Settings { verbosity, lines, warnings }, call).await;
    // Every line said before the call's end is.
    if let Some(w) = writer {
        let _ = w.await;
    }
    done
}

/// Whether the call asked for no progress lines (`-q`).
pub fn quiet() -> bool {
    CALL.try_with(|s| s.verbosity < 0).unwrap_or(false)
}

/// The most detailed level a call of `verbosity` is told: `-v` debug, `-vv` trace.
fn most_detail(verbosity: i8) -> Option<Level> {
    match verbosity {
        ..=0 => None,
        1 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    }
}

/// The layer that writes a verbose call's events to its caller. Only openbox's own
/// events are considered at all; others (SSH, HTTP) never reach it.
pub fn layer<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>() -> impl Layer<S> {
    // Asked per event too: events bridged from the `log` crate share one callsite.
    let enabled = |meta: &Metadata<'_>, _: &Context<'_, S>| {
        meta.target().starts_with("openbox")
            && CALL
                .try_with(|s| {
                    s.lines.is_some()
                        && most_detail(s.verbosity).is_some_and(|l| *meta.level() <= l)
                        && (s.warnings || *meta.level() > Level::WARN)
                })
                .unwrap_or(false)
    };
    let ours = |meta: &'static Metadata<'static>| {
        if meta.is_event() && meta.target().starts_with("openbox") { Interest::sometimes() } else { Interest::never() }
    };
    ToCaller.with_filter(DynFilterFn::new(enabled).with_callsite_filter(ours))
}

struct ToCaller;

impl<S: Subscriber> Layer<S> for ToCaller {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let _ = CALL.try_with(|s| {
            let Some(lines) = &s.lines else { return };
            let meta = event.metadata();
            let mut line = Line::default();
            event.record(&mut line);
            let text = format!(
                "openbox: [{}] {}{}{}\n",
                meta.level().as_str().to_lowercase(),
                meta.target(),
                if line.message.is_empty() { String::new() } else { format!(": {}", line.message) },
                line.fields
            );
            let _ = lines.try_send(text);
        });
    }
}

/// An event's message and its other fields, ` key=value` each.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl tracing::field::Visit for Line {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push_str(&format!(" {}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}
