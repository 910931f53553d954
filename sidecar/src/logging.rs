//! Log set-up shared by `ferryd` and `ferry`.

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Logs to stderr at `level` (or as `RUST_LOG` says, when set).
pub fn init(level: LogLevel, json: bool) {
    // kube's client logs every failed API request at error without saying which, and its
    // watcher dumps every failed list at warn; the kubernetes-mode watches log the same failure
    // once, in one line, with the namespace and the kind.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,kube_client::client::builder=off,kube_runtime::watcher=error,ferry_sidecar={0},ferry_cli={0},ferryd={0},ferry={0}",
            level.as_str()
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        use std::io::IsTerminal as _;
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let _ = builder.with_target(false).with_ansi(ansi).try_init();
    }
}
