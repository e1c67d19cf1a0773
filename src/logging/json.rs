//! The JSON log line (`--log-format json`), written straight into the line's buffer.
//!
//! The line is the one tracing-subscriber's `json().flatten_event(true)` writes, byte for byte
//! (`timestamp`, `level`, the event's fields in order, `target`; a test holds the two side by
//! side), without going through serde: every call writes a decision line, and tracing-subscriber
//! routes each piece through a serde serializer and an `io::Write` adaptor that validates the
//! UTF-8 it was just given. callgate opens no spans, so none are written.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The [`FormatEvent`] for JSON lines.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        line(&mut writer, event)
    }
}

/// Writes `event`'s line, stamped with the wall clock.
fn line(out: &mut impl fmt::Write, event: &Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    let at = humantime::format_rfc3339_micros(SystemTime::now());
    write!(out, "{{\"timestamp\":\"{at}\",\"level\":\"{}\"", meta.level())?;
    let mut fields = Fields { out: &mut *out, result: Ok(()) };
    event.record(&mut fields);
    fields.result?;
    out.write_str(",\"target\":")?;
    string(out, meta.target())?;
    out.write_str("}\n")
}

/// Writes each field as `,"name":value`, as serde_json would write the value.
struct Fields<'a, W> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| string(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json writes a float as ryu does, and a NaN or an infinity as null.
        self.entry(field, |out| match serde_json::Number::from_f64(value) {
            Some(n) => write!(out, "{n}"),
            None => out.write_str("null"),
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| out.write_str(if value { "true" } else { "false" }));
    }
}

/// `value` as a JSON string.
fn string(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(value)?;
    out.write_char('"')
}

/// Escapes what passes through it as serde_json escapes a string's contents: `"`, `\` and the
/// control characters below U+0020; everything else as it is.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped is ASCII, so `start..i` falls on character boundaries.
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Events of every kind of field, with every kind of character a string may hold.
    fn log_everything() {
        let awkward = "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} del \u{7f} nul \0 é ✓ 🙂";
        tracing::info!(
            target: "callgate::call",
            call_id = "CA0123",
            to = awkward,
            agent_id = Option::<&str>::None,
            reason = Some("no credit"),
            gate_ms = 1.25,
            whole = 3.0,
            tiny = 1e-7,
            huge = 1e300,
            nan = f64::NAN,
            count = 7u64,
            delta = -3i64,
            shadow = true,
            display = %format_args!("a \"displayed\"\n{}", 1),
            debug = ?vec!["x", "y\""],
            "call decided"
        );
        tracing::warn!(left_out = 2u64, "X-Twilio-Signature did not validate: {}", awkward);
        tracing::error!("plain message");
    }

    /// The same lines through tracing-subscriber's JSON format and through [`JsonLines`].
    #[test]
    fn lines_are_tracing_subscribers_json_lines_byte_for_byte() {
        let theirs = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(theirs.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log_everything);
        let ours = Lines::default();
        let subscriber = tracing_subscriber::fmt().with_writer(ours.clone()).event_format(JsonLines).finish();
        tracing::subscriber::with_default(subscriber, log_everything);

        let (theirs, ours) = (theirs.text(), ours.text());
        assert_eq!(ours.lines().count(), 3, "{ours}");
        // The timestamps differ by when each ran; everything after them must not.
        let after_timestamp = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                    let stamp = v["timestamp"].as_str().expect("a timestamp").to_owned();
                    assert!(humantime::parse_rfc3339(&stamp).is_ok(), "{stamp}");
                    assert_eq!(stamp.len(), "2026-12-04T21:30:00.123456Z".len(), "{stamp}");
                    l.replacen(&stamp, "T", 1)
                })
                .collect()
        };
        assert_eq!(after_timestamp(&ours), after_timestamp(&theirs));
        assert!(ours.ends_with('\n'));
    }
}
