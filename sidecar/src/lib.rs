//! Ferry's sidecar: Dapr-compatible service invocation.
//!
//! The pure core lives in [`invoke`] (targets, methods, headers, errors). The call path is two
//! stacks of tower services: [`outbound`] (an app's requests to wherever they name) and
//! [`inbound`] (peers' requests for the app), built by [`stacks`] over what is injected: the
//! resolver, the peer connector, the app channel ([`upstream`]). Only [`server`] binds sockets.
#![forbid(unsafe_code)]

pub mod api;
pub mod apphealth;
pub mod body;
pub mod config;
pub mod conn;
pub mod endpoints;
pub mod inbound;
pub mod invoke;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod server;
pub mod stacks;
pub mod upstream;

pub use config::{ConfigError, Settings, SidecarArgs};
pub use server::{RunInfo, Running, StartError, start, start_with};

/// Exit code for bad flags or configuration (BSD `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// Help and version print as usual; a bad flag gets one line naming it (`<program>: invalid
/// value '70000' for '--app-port <APP_PORT>': 70000 is not in 1..=65535`) and exit code 64.
pub fn exit_on_clap_error(program: &str, e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    eprintln!("{program}: {line}");
    std::process::exit(EX_USAGE);
}
