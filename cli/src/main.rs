//! `ferry`: run apps with a sidecar on one machine, invoke them, list them.
#![forbid(unsafe_code)]

mod crds;
mod inject;
mod invoke;
mod list;
mod multi;
mod run;
mod runfile;
mod stop;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use ferry_sidecar::exit_on_clap_error;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Dapr-compatible service invocation, on one machine or on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a sidecar and (optionally) an app next to it: `ferry run --app-id cart --app-port 5000
    /// python3 app.py`; or every app of a run file: `ferry run -f dapr.yaml`.
    Run(Box<run::RunArgs>),
    /// Stop apps started with `ferry run`: `--app-id cart`, or `-f dapr.yaml` for a run file's.
    Stop(stop::StopArgs),
    /// Invoke a method of a running app through a sidecar.
    Invoke(invoke::InvokeArgs),
    /// List the apps running on this machine.
    List(list::ListArgs),
    /// Add the sidecar to the pods and pod templates of Kubernetes manifests, offline.
    Inject(inject::InjectArgs),
    /// Write the CustomResourceDefinitions as YAML files (`make crds`).
    Crds(crds::CrdsArgs),
    /// Print the version.
    Version,
}

/// The command line definition, with `run`'s adjustments (see [`run::adjust`]).
fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", run::adjust)
}

fn parse<I, T>(args: I) -> Result<(Cli, clap::ArgMatches), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches_mut(&mut matches.clone())?;
    Ok((cli, matches))
}

fn main() {
    let (cli, matches) = match parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => exit_on_clap_error("ferry", e),
    };
    let code = match cli.command {
        Command::Run(args) => {
            let run = matches
                .subcommand_matches("run")
                .expect("the run subcommand was parsed");
            run::main(*args, run)
        }
        Command::Stop(args) => stop::main(args),
        Command::Invoke(args) => invoke::main(args),
        Command::List(args) => list::main(args),
        Command::Crds(args) => crds::main(args),
        Command::Inject(args) => inject::main(args),
        Command::Version => {
            println!("ferry {}", env!("CARGO_PKG_VERSION"));
            0
        }
    };
    std::process::exit(code);
}

/// A current-thread runtime is plenty for the CLI's own work; `run` uses a multi-threaded one.
pub(crate) fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .expect("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_sound() {
        command().debug_assert();
    }

    fn run_args(args: &[&str]) -> run::RunArgs {
        let (cli, _) = parse(args).unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        *r
    }

    #[test]
    fn run_takes_the_command_without_double_dash_as_dapr_run_does() {
        let r = run_args(&[
            "ferry",
            "run",
            "--app-id",
            "checkoutservice",
            "--app-port",
            "6002",
            "--dapr-http-port",
            "3602",
            "--dapr-grpc-port",
            "60002",
            "python3",
            "app.py",
            "--app-port",
            "1",
            "-f",
            "--",
            "x",
        ]);
        assert_eq!(
            r.command,
            ["python3", "app.py", "--app-port", "1", "-f", "--", "x"],
            "everything after the command goes to the app unchanged"
        );
        assert_eq!(r.sidecar.app_port, Some(6002));
        assert_eq!(r.sidecar.dapr_http_port, 3602);
        assert_eq!(r.sidecar.dapr_grpc_port, 60002);
        assert!(r.run_file.is_none());
    }

    #[test]
    fn run_takes_daprs_short_flags() {
        let r = run_args(&[
            "ferry", "run", "-a", "cart", "-p", "5000", "-H", "3501", "-G", "50009", "-P", "h2c",
            "-M", "9099", "-d", "./res", "node", "app.js",
        ]);
        assert_eq!(r.sidecar.app_id.as_str(), "cart");
        assert_eq!(r.sidecar.app_port, Some(5000));
        assert_eq!(r.sidecar.dapr_http_port, 3501);
        assert_eq!(r.sidecar.dapr_grpc_port, 50009);
        assert_eq!(r.sidecar.app_protocol, ferry_api::AppProtocol::H2c);
        assert_eq!(r.sidecar.metrics_port, 9099);
        assert_eq!(
            r.sidecar.resources_path,
            [std::path::PathBuf::from("./res")]
        );
        assert_eq!(r.command, ["node", "app.js"]);
    }

    #[test]
    fn run_takes_a_run_file_without_an_app_id() {
        let r = run_args(&["ferry", "run", "-f", "dapr.yaml"]);
        assert_eq!(r.run_file, Some("dapr.yaml".into()));
        assert_eq!(r.sidecar.app_id.as_str(), run::NO_APP_ID);
    }

    #[test]
    fn run_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "ferry",
            "run",
            "--app-id",
            "cart",
            "--app-port",
            "5000",
            "--",
            "python3",
            "app.py",
            "--flag",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.command, ["python3", "app.py", "--flag"]);
        assert_eq!(r.sidecar.app_port, Some(5000));
    }
}
