//! The system under test: the app, three ferryd sidecars and two nginx proxies, all started
//! once, pinned to the same CPU, and kept running for the whole benchmark so every path sees warm
//! pools and the same neighbours.
//!
//! * `bench-self`: ferryd with the app; the self path calls it with its own app ID.
//! * `bench-caller` → `bench-callee`: the remote path; the caller has no app (the load generator
//!   plays the calling app), the callee fronts the app. Both resolve each other through a private
//!   `FERRY_HOME` registry.
//! * `bench-mtls-caller` → `bench-mtls-callee`: the same pair started with `--enable-mtls`, its
//!   certificates from the standalone local CA under the shared `FERRY_HOME` (`<home>/ca`, made
//!   by the first of them to start). Its own app IDs keep the two pairs from resolving into each
//!   other: each caller only ever calls its own callee.
//! * nginx front → nginx back → app, keep-alive upstreams, one worker each, streaming both ways.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs, io,
    net::{SocketAddr, TcpListener},
    path::{Path as FsPath, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use serde_json::Value;

use crate::{
    Error,
    matrix::{Path, Role},
    probe, procfs,
};

pub struct Config {
    pub ferryd: PathBuf,
    pub nginx: PathBuf,
    /// This binary, for `ferry-bench app`.
    pub bench_exe: PathBuf,
    pub cpu: usize,
    /// Scratch directory: configs, logs, the registry.
    pub dir: PathBuf,
}

/// A program to start pinned: its arguments and, when set, its whole environment.
struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    env: Option<Vec<(OsString, OsString)>>,
}

impl Launch {
    fn new(program: &FsPath) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            env: None,
        }
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }
}

struct Process {
    role: Role,
    child: Child,
    /// The process and, for nginx, its workers.
    pids: Vec<u32>,
    log: PathBuf,
}

pub struct Sut {
    procs: Vec<Process>,
    app_port: u16,
    self_http: u16,
    caller_http: u16,
    mtls_caller_http: u16,
    nginx_port: u16,
}

pub const SELF_ID: &str = "bench-self";
pub const CALLER_ID: &str = "bench-caller";
pub const CALLEE_ID: &str = "bench-callee";
pub const MTLS_CALLER_ID: &str = "bench-mtls-caller";
pub const MTLS_CALLEE_ID: &str = "bench-mtls-callee";
const STARTUP: Duration = Duration::from_secs(20);

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Sut {
    pub fn start(cfg: &Config) -> Result<Sut, Error> {
        let home = cfg.dir.join("ferry-home");
        fs::create_dir_all(home.join("registry")).map_err(Error::io("create FERRY_HOME"))?;
        let mut sut = Sut {
            procs: Vec::new(),
            app_port: free_port().map_err(Error::io("pick a port"))?,
            self_http: 0,
            caller_http: 0,
            mtls_caller_http: 0,
            nginx_port: 0,
        };

        let app_port = sut.app_port;
        let app = Launch::new(&cfg.bench_exe).args(["app", "--port", &app_port.to_string()]);
        sut.spawn(cfg, Role::App, app)?;
        wait_for("the app", STARTUP, || probe::accepts(local(app_port)))?;

        let ferryd = |id: &str, app: Option<u16>, mtls: bool| {
            let mut l = Launch::new(&cfg.ferryd).args(ferryd_args(id, app, mtls));
            l.env = Some(ferryd_env(&home));
            l
        };
        sut.self_http = sut.start_ferryd(
            cfg,
            Role::FerrydSelf,
            ferryd(SELF_ID, Some(app_port), false),
        )?;
        sut.start_ferryd(
            cfg,
            Role::FerrydCallee,
            ferryd(CALLEE_ID, Some(app_port), false),
        )?;
        sut.caller_http =
            sut.start_ferryd(cfg, Role::FerrydCaller, ferryd(CALLER_ID, None, false))?;
        // One at a time: the first creates the local CA under the shared home.
        sut.start_ferryd(
            cfg,
            Role::FerrydMtlsCallee,
            ferryd(MTLS_CALLEE_ID, Some(app_port), true),
        )?;
        sut.mtls_caller_http = sut.start_ferryd(
            cfg,
            Role::FerrydMtlsCaller,
            ferryd(MTLS_CALLER_ID, None, true),
        )?;

        let back = free_port().map_err(Error::io("pick a port"))?;
        sut.start_nginx(cfg, Role::NginxBack, back, app_port)?;
        sut.nginx_port = free_port().map_err(Error::io("pick a port"))?;
        sut.start_nginx(cfg, Role::NginxFront, sut.nginx_port, back)?;
        Ok(sut)
    }

    fn spawn(&mut self, cfg: &Config, role: Role, launch: Launch) -> Result<u32, Error> {
        let log = cfg
            .dir
            .join(format!("{}.log", role.label().replace([' ', '(', ')'], "")));
        let out = fs::File::create(&log).map_err(Error::io("create a log file"))?;
        let err = out.try_clone().map_err(Error::io("create a log file"))?;
        // taskset execs the program, so the child's pid is the program's.
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cfg.cpu.to_string()])
            .arg(&launch.program)
            .args(&launch.args);
        if let Some(env) = &launch.env {
            cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Spawn {
                what: format!("{} ({})", role.label(), launch.program.display()),
                source: e,
            })?;
        let pid = child.id();
        self.procs.push(Process {
            role,
            child,
            pids: vec![pid],
            log,
        });
        Ok(pid)
    }

    /// Starts one ferryd and returns its HTTP API port, once it is registered and healthy.
    fn start_ferryd(&mut self, cfg: &Config, role: Role, cmd: Launch) -> Result<u16, Error> {
        let pid = self.spawn(cfg, role, cmd)?;
        let registry = cfg.dir.join("ferry-home").join("registry");
        let mut port = None;
        wait_for(role.label(), STARTUP, || {
            self.check_alive(role).is_ok() && {
                port = registry_port(&registry, pid);
                port.is_some()
            }
        })
        .map_err(|e| self.with_log(role, e))?;
        let port = port.expect("set when wait_for succeeds");
        wait_for(role.label(), STARTUP, || {
            probe::request(
                local(port),
                "GET",
                "/v1.0/healthz",
                b"",
                Duration::from_secs(2),
            )
            .is_ok_and(|(s, _)| s == 204)
        })
        .map_err(|e| self.with_log(role, e))?;
        Ok(port)
    }

    fn start_nginx(
        &mut self,
        cfg: &Config,
        role: Role,
        port: u16,
        upstream: u16,
    ) -> Result<(), Error> {
        let name = if role == Role::NginxFront {
            "front"
        } else {
            "back"
        };
        let dir = cfg.dir.join(format!("nginx-{name}"));
        fs::create_dir_all(&dir).map_err(Error::io("create the nginx directory"))?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, port, upstream))
            .map_err(Error::io("write nginx.conf"))?;
        let cmd = Launch::new(&cfg.nginx)
            .args(["-p".as_ref(), dir.as_os_str()])
            .args(["-c".as_ref(), conf.as_os_str()])
            .args(["-e".as_ref(), dir.join("error.log").as_os_str()]);
        let master = self.spawn(cfg, role, cmd)?;
        wait_for(role.label(), STARTUP, || {
            self.check_alive(role).is_ok() && probe::accepts(local(port))
        })
        .map_err(|e| self.with_log(role, e))?;
        let mut workers = Vec::new();
        wait_for("the nginx worker", STARTUP, || {
            workers = procfs::children_of(master);
            !workers.is_empty()
        })?;
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.role == role)
            .expect("spawned");
        p.pids.extend(workers);
        Ok(())
    }

    fn check_alive(&mut self, role: Role) -> Result<(), Error> {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.role == role)
            .expect("spawned");
        match p.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Died {
                what: role.label().into(),
                detail: format!("exited ({status})"),
            }),
            Err(e) => Err(Error::Died {
                what: role.label().into(),
                detail: e.to_string(),
            }),
        }
    }

    fn with_log(&self, role: Role, e: Error) -> Error {
        let log = self
            .procs
            .iter()
            .find(|p| p.role == role)
            .and_then(|p| fs::read_to_string(&p.log).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Error::Died {
            what: role.label().into(),
            detail: format!("{e}\n--- log ---\n{}", tail.join("\n")),
        }
    }

    /// Every process still running? (Checked after each run: a crash must not pass as a result.)
    pub fn check_all_alive(&mut self) -> Result<(), Error> {
        let roles: Vec<Role> = self.procs.iter().map(|p| p.role).collect();
        for r in roles {
            self.check_alive(r).map_err(|e| self.with_log(r, e))?;
        }
        Ok(())
    }

    /// The URL of `route` (`/echo`, `/sse`) through `path`.
    pub fn url(&self, path: Path, route: &str) -> String {
        match path {
            Path::Direct => format!("http://127.0.0.1:{}{route}", self.app_port),
            Path::SelfInvoke => format!(
                "http://127.0.0.1:{}/v1.0/invoke/{SELF_ID}/method{route}",
                self.self_http
            ),
            Path::Remote => format!(
                "http://127.0.0.1:{}/v1.0/invoke/{CALLEE_ID}/method{route}",
                self.caller_http
            ),
            Path::RemoteMtls => format!(
                "http://127.0.0.1:{}/v1.0/invoke/{MTLS_CALLEE_ID}/method{route}",
                self.mtls_caller_http
            ),
            Path::Nginx => format!("http://127.0.0.1:{}{route}", self.nginx_port),
        }
    }

    /// Sends one `POST /echo` of `len` bytes through `path` and checks the answer.
    pub fn check_path(&self, path: Path, len: usize) -> Result<(), Error> {
        let url = self.url(path, "/echo");
        let rest = url.trim_start_matches("http://");
        let (hostport, route) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = hostport.parse().expect("harness-made URL");
        let (status, body) = probe::request(
            addr,
            "POST",
            route,
            &vec![b'a'; len],
            Duration::from_secs(10),
        )
        .map_err(|e| Error::Check {
            path: path.label(),
            detail: e.to_string(),
        })?;
        if status != 200 || body.len() != len {
            return Err(Error::Check {
                path: path.label(),
                detail: format!(
                    "status {status}, {} body bytes (expected 200 and {len}): {}",
                    body.len(),
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ),
            });
        }
        Ok(())
    }

    /// `utime + stime` ticks per role (nginx: master and worker).
    pub fn cpu_ticks(&self) -> BTreeMap<Role, u64> {
        self.procs
            .iter()
            .map(|p| {
                let ticks = p
                    .pids
                    .iter()
                    .filter_map(|&pid| procfs::read_task(pid).ok())
                    .map(|t| t.cpu_ticks)
                    .sum();
                (p.role, ticks)
            })
            .collect()
    }

    /// `(VmRSS, VmHWM)` KiB per role (nginx: master and worker added up).
    pub fn rss(&self) -> BTreeMap<Role, (u64, u64)> {
        self.procs
            .iter()
            .map(|p| {
                let (r, h) = p
                    .pids
                    .iter()
                    .filter_map(|&pid| procfs::read_rss(pid).ok())
                    .fold((0, 0), |(r, h), (r2, h2)| (r + r2, h + h2));
                (p.role, (r, h))
            })
            .collect()
    }

    pub fn pids(&self, role: Role) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| p.role == role)
            .flat_map(|p| p.pids.clone())
            .collect()
    }

    pub fn logs(&self) -> Vec<(Role, PathBuf)> {
        self.procs.iter().map(|p| (p.role, p.log.clone())).collect()
    }

    /// SIGTERM everything (ferryd drains and deregisters, nginx stops its worker), then SIGKILL
    /// whatever is left after a few seconds.
    pub fn stop(&mut self) {
        for p in self.procs.iter().rev() {
            let _ = signal::kill(Pid::from_raw(p.child.id() as i32), signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        for p in self.procs.iter_mut().rev() {
            while Instant::now() < deadline && matches!(p.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            for &pid in &p.pids[1..] {
                let _ = signal::kill(Pid::from_raw(pid as i32), signal::SIGKILL);
            }
        }
        self.procs.clear();
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The arguments of one ferryd under test: its app ID, its app when it has one, its ports on
/// loopback (the HTTP API on a free port, found in the registry), and `--enable-mtls` for the
/// mTLS pair (its CA: the standalone local CA of `FERRY_HOME`, see [`ferryd_env`]).
pub fn ferryd_args(id: &str, app_port: Option<u16>, mtls: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "--app-id",
        id,
        "--dapr-http-port",
        "0",
        "--dapr-grpc-port",
        "0",
    ]
    .into_iter()
    .chain(["--dapr-listen-addresses", "127.0.0.1"])
    .map(str::to_owned)
    .collect();
    if let Some(p) = app_port {
        a.extend(["--app-port".to_owned(), p.to_string()]);
    }
    if mtls {
        a.push("--enable-mtls".to_owned());
    }
    a
}

/// A clean environment for every ferryd: nothing from the machine's FERRY_* or NAMESPACE; one
/// `FERRY_HOME` shared by all of them (the registry, and the mTLS pair's local CA in `<home>/ca`).
pub fn ferryd_env(home: &FsPath) -> Vec<(OsString, OsString)> {
    vec![
        ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
        ("HOME".into(), home.as_os_str().to_owned()),
        ("FERRY_HOME".into(), home.as_os_str().to_owned()),
    ]
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.into(),
                secs: limit.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The HTTP port in the registry entry written by process `pid`.
fn registry_port(dir: &FsPath, pid: u32) -> Option<u16> {
    fs::read_dir(dir).ok()?.find_map(|e| {
        let path = e.ok()?.path();
        let v: Value = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        (v["pid"].as_u64() == Some(pid as u64))
            .then(|| v["http_port"].as_u64())
            .flatten()
            .map(|p| p as u16)
    })
}

/// One nginx reverse proxy: one worker, no access log, a keep-alive upstream
/// (`keepalive`, HTTP/1.1, `Connection ""`), and bodies streamed both ways
/// (`proxy_request_buffering off`, `proxy_buffering off`) as ferryd streams them, which also
/// makes server-sent events flow. Keep-alive limits are lifted so that neither side closes
/// connections during a run (nginx closes after 1000 requests by default; ferryd does not).
pub fn nginx_conf(dir: &FsPath, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream next {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_has_keepalive_upstream_and_one_worker() {
        let c = nginx_conf(FsPath::new("/tmp/x"), 8081, 9000);
        for needle in [
            "worker_processes 1;",
            "access_log off;",
            "server 127.0.0.1:9000;",
            "keepalive 256;",
            "listen 127.0.0.1:8081;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_buffering off;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(c.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn the_mtls_pair_runs_with_enable_mtls_under_the_shared_home() {
        let plain = ferryd_args(CALLER_ID, None, false);
        assert!(!plain.iter().any(|a| a.contains("mtls")), "{plain:?}");
        let callee = ferryd_args(MTLS_CALLEE_ID, Some(9000), true);
        assert_eq!(
            callee.join(" "),
            "--app-id bench-mtls-callee --dapr-http-port 0 --dapr-grpc-port 0 --dapr-listen-addresses 127.0.0.1 \
             --app-port 9000 --enable-mtls"
        );
        let caller = ferryd_args(MTLS_CALLER_ID, None, true);
        assert!(caller.contains(&"--enable-mtls".to_owned()));
        assert!(!caller.contains(&"--app-port".to_owned()));
        // Their own app IDs: neither pair's caller can resolve the other pair's callee.
        let ids = [
            SELF_ID,
            CALLER_ID,
            CALLEE_ID,
            MTLS_CALLER_ID,
            MTLS_CALLEE_ID,
        ];
        let mut unique = ids.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        // Every ferryd shares one home: one registry, and the local CA under it.
        let home = FsPath::new("/tmp/bench/ferry-home");
        let env = ferryd_env(home);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("FERRY_HOME"), Some(home.as_os_str().to_owned()));
        assert_eq!(get("HOME"), Some(home.as_os_str().to_owned()));
        assert_eq!(env.len(), 3, "nothing else from the machine's environment");
    }

    #[test]
    fn the_mtls_path_calls_its_own_callee() {
        let sut = Sut {
            procs: Vec::new(),
            app_port: 1,
            self_http: 2,
            caller_http: 3,
            mtls_caller_http: 4,
            nginx_port: 5,
        };
        assert_eq!(
            sut.url(Path::RemoteMtls, "/echo"),
            "http://127.0.0.1:4/v1.0/invoke/bench-mtls-callee/method/echo"
        );
        assert_eq!(
            sut.url(Path::Remote, "/echo"),
            "http://127.0.0.1:3/v1.0/invoke/bench-callee/method/echo"
        );
    }

    #[test]
    fn finds_the_registry_entry_of_a_pid() {
        let dir = std::env::temp_dir().join(format!("ferry-bench-reg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("a.json"),
            r#"{"app_id":"a","pid":11,"http_port":3500}"#,
        )
        .unwrap();
        fs::write(dir.join("b.json"), r#"{"pid":12,"http_port":41000}"#).unwrap();
        fs::write(dir.join("c.json"), "{partial").unwrap();
        assert_eq!(registry_port(&dir, 12), Some(41000));
        assert_eq!(registry_port(&dir, 13), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
