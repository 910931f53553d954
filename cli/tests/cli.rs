//! `ferry` as a user runs it: real processes, real signals, a real registry directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// A private FERRY_HOME, removed afterwards.
struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ferry-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn entries(&self) -> Vec<serde_json::Value> {
        let out = ferry()
            .args(["list", "-o", "json"])
            .env("FERRY_HOME", &self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_to_end(home: &Path, args: &[&str]) -> Output {
    ferry()
        .arg("run")
        .args(["--dapr-http-port", "0"])
        .args(args)
        .env("FERRY_HOME", home)
        .output()
        .unwrap()
}

#[test]
fn run_gives_the_app_its_environment_and_returns_its_exit_code() {
    let home = Home::new("env");
    let out = run_to_end(
        &home.0,
        &[
            "--app-id",
            "envapp",
            "--app-port",
            "5999",
            "--",
            "sh",
            "-c",
            "echo \"$APP_ID $APP_PORT $DAPR_GRPC_PORT $DAPR_HTTP_PORT\"; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&parts[..3], ["envapp", "5999", "50001"], "{line}");
    assert!(
        parts[3].parse::<u16>().unwrap() > 0,
        "DAPR_HTTP_PORT is the real port: {line}"
    );
    assert!(
        home.entries().is_empty(),
        "the registry entry is removed on exit"
    );
}

#[test]
fn run_reports_a_missing_command() {
    let home = Home::new("missing");
    let out = run_to_end(&home.0, &["--app-id", "x", "--", "/nonexistent/app"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot start"),
        "{out:?}"
    );
}

#[test]
fn bad_flags_get_one_line_and_code_64() {
    for (args, flag) in [
        (
            vec!["run", "--app-id", "x", "--app-port", "70000"],
            "--app-port",
        ),
        (vec!["run", "--app-id", "a.b"], "--app-id"),
        (
            vec!["run", "--app-id", "x", "--max-body-size", "lots"],
            "--max-body-size",
        ),
        (
            vec!["run", "--app-id", "x", "--app-protocol", "grpc"],
            "--app-protocol",
        ),
        (
            vec![
                "invoke", "--app-id", "x", "--method", "m", "--verb", "BAD VERB",
            ],
            "--verb",
        ),
    ] {
        let out = ferry().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn run_forwards_sigterm_and_cleans_up() {
    let home = Home::new("signal");
    let child = ferry()
        .args([
            "run",
            "--dapr-http-port",
            "0",
            "--app-id",
            "sigapp",
            "--",
            "sh",
            "-c",
        ])
        .arg("trap 'echo got-term; exit 7' TERM; while :; do sleep 0.05; done")
        .env("FERRY_HOME", &home.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the app to start", || {
        home.entries()
            .first()
            .is_some_and(|e| e["app_pid"].as_u64().is_some())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("got-term"));
    assert!(home.entries().is_empty());
}

#[test]
fn invoke_and_list_reach_a_real_app() {
    let home = Home::new("invoke");
    let app_port = free_port();
    let site = home.0.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello from the app\n").unwrap();
    let mut run = ferry()
        .args([
            "run",
            "--dapr-http-port",
            "0",
            "--app-id",
            "web",
            "--app-port",
        ])
        .arg(app_port.to_string())
        .args(["--", "python3", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg(app_port.to_string())
        .current_dir(&site)
        .env("FERRY_HOME", &home.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = {
        let mut port = 0;
        wait_until("the sidecar to register", || {
            port = home
                .entries()
                .first()
                .map_or(0, |e| e["http_port"].as_u64().unwrap());
            port != 0
        });
        port
    };
    wait_until("the app to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", app_port)).is_ok()
    });

    let list = ferry()
        .arg("list")
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    let table = String::from_utf8(list.stdout).unwrap();
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    assert!(table.contains("python3 -m http.server"), "{table}");

    let ok = ferry()
        .args([
            "invoke",
            "--app-id",
            "web",
            "--method",
            "hello.txt",
            "--verb",
            "GET",
        ])
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(
        String::from_utf8(ok.stdout).unwrap(),
        "hello from the app\n"
    );

    let missing = ferry()
        .args([
            "invoke", "--app-id", "web", "--method", "nope.txt", "--verb", "GET",
        ])
        .arg("--dapr-http-port")
        .arg(port.to_string())
        .output()
        .unwrap();
    assert_eq!(
        missing.status.code(),
        Some(1),
        "a 404 is a failure: {missing:?}"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = run.wait().unwrap();
    // http.server exits on SIGINT with KeyboardInterrupt handling: 130 or 0 depending on Python.
    assert!(status.code().is_some(), "{status:?}");
    assert!(home.entries().is_empty());
}
