//! Log set-up shared by `ferryd` and `ferry`.

use std::{
    fs::File,
    io::{self, Write},
    sync::{Arc, Mutex},
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

use crate::config::LogLevel;

/// Where log lines go: stderr, as is or behind a prefix, and/or a file (`ferry run -f` writes
/// each sidecar's log to a file, as Dapr's Multi-App Run does, or marks its lines on the console
/// with the app ID).
#[derive(Debug, Default)]
pub struct LogOutput {
    /// Put in front of every line on stderr.
    pub prefix: Option<String>,
    /// Also (or only, with `quiet`) append every line to this file.
    pub file: Option<File>,
    /// Nothing on stderr: the file takes the lines.
    pub quiet: bool,
}

/// Logs to stderr at `level` (or as `RUST_LOG` says, when set).
pub fn init(level: LogLevel, json: bool) {
    init_to(level, json, LogOutput::default());
}

/// [`init`], to `out`.
pub fn init_to(level: LogLevel, json: bool, out: LogOutput) {
    // kube's client logs every failed API request at error without saying which, and its
    // watcher dumps every failed list at warn; the kubernetes-mode watches log the same failure
    // once, in one line, with the namespace and the kind. The API log is at info whatever the
    // level, as Dapr's (`--enable-api-logging` turns it on).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,kube_client::client::builder=off,kube_runtime::watcher=error,ferry_sidecar={0},ferry_cli={0},ferryd={0},ferry={0},ferry_sidecar::api_log=info",
            level.as_str()
        ))
    });
    use std::io::IsTerminal as _;
    let plain = out.prefix.is_none() && out.file.is_none() && !out.quiet;
    let ansi = plain && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let writer = Lines(Arc::new(Sink {
        prefix: out.prefix.unwrap_or_default().into_bytes(),
        file: out.file.map(Mutex::new),
        console: !out.quiet,
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.with_target(false).with_ansi(ansi).try_init();
    }
}

struct Sink {
    prefix: Vec<u8>,
    file: Option<Mutex<File>>,
    console: bool,
}

/// Hands out a writer per log line; `tracing_subscriber::fmt` writes each line in one call.
#[derive(Clone)]
struct Lines(Arc<Sink>);

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sink = &*self.0;
        if sink.console {
            // One write per line, prefix included: lines of several processes sharing a
            // terminal or pipe do not interleave.
            let mut line = Vec::with_capacity(sink.prefix.len() + buf.len());
            line.extend_from_slice(&sink.prefix);
            line.extend_from_slice(buf);
            let _ = io::stderr().lock().write_all(&line);
        }
        if let Some(file) = &sink.file {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
