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
    assert_eq!(&parts[..2], ["envapp", "5999"], "{line}");
    // Without -G, as `dapr run`: a free port, the one the gRPC API listens on.
    let grpc = parts[2].parse::<u16>().unwrap();
    assert!(grpc > 0, "DAPR_GRPC_PORT is the real port: {line}");
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

/// A raw HTTP/1.1 GET; returns the status code and the body.
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn alive(pid: u64) -> bool {
    // A zombie is gone for our purposes only once reaped; check /proc's state too.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn the_docs_dapr_run_line_works_with_and_without_double_dash() {
    let home = Home::new("docs-line");
    let (http, grpc, app) = (free_port(), free_port(), free_port());
    let script = "echo \"$APP_ID $APP_PORT $DAPR_HTTP_PORT $DAPR_GRPC_PORT $*\"";
    for dashes in [false, true] {
        let mut cmd = ferry();
        cmd.args(["run", "--app-id", "checkoutservice", "--app-port"])
            .arg(app.to_string())
            .arg("--dapr-http-port")
            .arg(http.to_string())
            .arg("--dapr-grpc-port")
            .arg(grpc.to_string());
        if dashes {
            cmd.arg("--");
        }
        // The app's own flags, even ferry's names, go to the app unchanged.
        let out = cmd
            .args(["sh", "-c", script, "sh", "--app-port", "1", "-f", "x"])
            .env("FERRY_HOME", &home.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            format!("checkoutservice {app} {http} {grpc} --app-port 1 -f x"),
            "with -- : {dashes}"
        );
    }
}

#[test]
fn daprs_flags_that_ferry_lacks_are_named_not_unexpected() {
    for (args, flag) in [
        (vec!["--unix-domain-socket", "/tmp"], "--unix-domain-socket"),
        (vec!["-u", "/tmp"], "--unix-domain-socket"),
        (vec!["--enable-profiling"], "--enable-profiling"),
        (vec!["--profile-port", "7777"], "--profile-port"),
        (vec!["-k"], "--kubernetes"),
        (vec!["--app-protocol", "grpc"], "grpc"),
    ] {
        let out = ferry()
            .args(["run", "--app-id", "x"])
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains("not supported yet"),
            "{args:?}: {err}"
        );
    }
    // A misspelt flag gets clap's suggestion on the same line.
    let out = ferry()
        .args(["run", "--app-id", "x", "--dapr-htp-port", "3500"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("'--dapr-http-port'"), "{err}");
    // Without --app-id or -f, the message says what is needed.
    let out = ferry().args(["run", "python3", "app.py"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--app-id"));
}

#[test]
fn api_logging_logs_each_call_as_dapr_does_but_not_health_checks() {
    let home = Home::new("api-log");
    let port = free_port();
    let child = ferry()
        .args([
            "run",
            "--app-id",
            "logger",
            "--enable-api-logging",
            "--log-level",
            "warn",
        ])
        .arg("--dapr-http-port")
        .arg(port.to_string())
        .env("FERRY_HOME", &home.0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the sidecar to register", || !home.entries().is_empty());
    let (status, _) = http_get(port, "/v1.0/healthz", &[]);
    assert_eq!(status, 204);
    let (status, body) = http_get(
        port,
        "/v1.0/invoke/cart/add",
        &[("user-agent", "docs-reader/1")],
    );
    assert_eq!(status, 404);
    assert!(body.contains("call /v1.0/invoke/cart/method/add"), "{body}");
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    let calls: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP API Called"))
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "one call logged, the health check not: {log}"
    );
    let line = calls[0];
    for field in [
        "method=\"GET /v1.0/invoke/cart/add\"",
        "useragent=\"docs-reader/1\"",
        "code=404",
        "size=",
        "duration=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

/// A run file in a fresh directory: `web` serves a file, `client` calls it by app ID through
/// its sidecar twice a second and prints the answer.
struct RunDir {
    dir: PathBuf,
    web_port: u16,
}

impl RunDir {
    fn new(home: &Home) -> Self {
        let dir = home.0.join("apps");
        std::fs::create_dir_all(dir.join("web")).unwrap();
        std::fs::create_dir_all(dir.join("client")).unwrap();
        std::fs::write(dir.join("web/hello.txt"), "hello from web\n").unwrap();
        let web_port = free_port();
        std::fs::write(
            dir.join("dapr.yaml"),
            format!(
                r#"version: 1
common:
  env:
    GREETING: hi
apps:
  - appID: web
    appDirPath: ./web
    appPort: {web_port}
    command: ["python3", "-u", "-m", "http.server", "--bind", "127.0.0.1", "{web_port}"]
  - appID: client
    appDirPath: ./client/
    daprdLogDestination: console
    command: ["sh", "-c", "echo $GREETING; while :; do curl -s http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/invoke/web/method/hello.txt; sleep 0.3; done"]
"#
            ),
        )
        .unwrap();
        Self { dir, web_port }
    }

    fn start(&self, home: &Home) -> std::process::Child {
        ferry()
            .args(["run", "-f"])
            .arg(&self.dir)
            .env("FERRY_HOME", &home.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Reads a child's stdout on a thread; lines arrive on the channel.
fn lines_of(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, seen: &mut Vec<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l| l == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line {want:?} in:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn a_run_file_starts_apps_that_call_each_other_and_ctrl_c_leaves_no_process() {
    let home = Home::new("multi");
    let run = RunDir::new(&home);
    let mut sup = run.start(&home);
    let rx = lines_of(sup.stdout.take().unwrap());
    let mut seen = Vec::new();
    wait_for_line(&rx, &mut seen, "== APP - client == hi");
    wait_for_line(&rx, &mut seen, "== APP - client == hello from web");

    let entries = home.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let run_file = run.dir.join("dapr.yaml").display().to_string();
    let mut pids = vec![u64::from(sup.id())];
    for e in &entries {
        assert_eq!(e["run_file"], run_file.as_str(), "{e}");
        assert_eq!(e["cli_pid"], sup.id(), "{e}");
        pids.push(e["pid"].as_u64().unwrap());
        pids.push(e["app_pid"].as_u64().unwrap());
    }
    // `ferry list` tells where they come from.
    let list = ferry()
        .arg("list")
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    let table = String::from_utf8(list.stdout).unwrap();
    assert!(
        table.contains("RUN FILE") && table.contains(&run_file),
        "{table}"
    );
    // The sidecar logs: web's in its file (Dapr's default), client's on the console.
    let logs: Vec<_> = std::fs::read_dir(run.dir.join("web/.dapr/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(logs.iter().any(|n| n.starts_with("web_daprd_")), "{logs:?}");
    assert!(logs.iter().any(|n| n.starts_with("web_app_")), "{logs:?}");

    signal(sup.id(), nix::sys::signal::Signal::SIGINT);
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    for pid in pids {
        wait_until(&format!("process {pid} to be gone"), || !alive(pid));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", run.web_port)).is_err(),
        "the web app is gone"
    );
    assert!(home.entries().is_empty());
    let err = {
        use std::io::Read as _;
        let mut s = String::new();
        sup.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert!(
        err.lines().any(|l| l.starts_with("== DAPR - client == ")),
        "the client's sidecar logs on the console, marked: {err}"
    );
}

#[test]
fn ferry_stop_stops_one_app_or_a_whole_run_file() {
    let home = Home::new("stop");
    let run = RunDir::new(&home);
    let mut sup = run.start(&home);
    let rx = lines_of(sup.stdout.take().unwrap());
    let mut seen = Vec::new();
    wait_for_line(&rx, &mut seen, "== APP - client == hello from web");

    let out = ferry()
        .args(["stop", "--app-id", "web"])
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ferry: app \"web\" stopped\n"
    );
    let left: Vec<String> = home
        .entries()
        .iter()
        .map(|e| e["app_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["client"]);
    let client = home.entries()[0]["app_pid"].as_u64().unwrap();

    let out = ferry()
        .args(["stop", "--app-id", "web"])
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "nothing to stop: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app \"web\" is running"));

    let out = ferry()
        .args(["stop", "-f"])
        .arg(run.dir.join("dapr.yaml"))
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    wait_until("the client app to be gone", || !alive(client));
    assert!(home.entries().is_empty());
}

#[test]
fn a_bad_run_file_is_refused_naming_the_file_the_app_and_the_key() {
    let home = Home::new("bad-run-file");
    std::fs::create_dir_all(home.0.join("cart")).unwrap();
    let file = home.0.join("dapr.yaml");
    std::fs::write(
        &file,
        "version: 1\napps:\n  - appID: cart\n    appDirPath: ./cart\n    appPrt: 5000\n",
    )
    .unwrap();
    let out = ferry()
        .args(["run", "-f"])
        .arg(&file)
        .env("FERRY_HOME", &home.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "ferry: {}: app \"cart\" (apps[0]): unknown key \"appPrt\" (did you mean \"appPort\"?)\n",
            file.display()
        )
    );
    assert!(home.entries().is_empty(), "nothing was started");
}

#[test]
fn a_run_file_with_enable_mtls_gives_every_sidecar_a_certificate() {
    let home = Home::new("multi-mtls");
    let run = RunDir::new(&home);
    let mut sup = ferry()
        .args(["run", "--enable-mtls", "-f"])
        .arg(&run.dir)
        .env("FERRY_HOME", &home.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(sup.stdout.take().unwrap());
    let mut seen = Vec::new();
    wait_for_line(&rx, &mut seen, "== APP - client == hello from web");
    let entries = home.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    for e in &entries {
        let port = e["http_port"].as_u64().unwrap() as u16;
        let (status, body) = http_get(port, "/v1.0/metadata", &[]);
        assert_eq!(status, 200, "{body}");
        let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
        let app = e["app_id"].as_str().unwrap();
        assert_eq!(
            meta["extended"]["spiffeID"],
            format!("spiffe://public/ns/default/{app}"),
            "{meta}"
        );
    }
    assert!(
        home.0.join("ca/ca.crt").exists(),
        "one local CA for the run"
    );
    signal(sup.id(), nix::sys::signal::Signal::SIGINT);
    assert_eq!(sup.wait().unwrap().code(), Some(0));
}
