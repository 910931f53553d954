//! The system under test: the app, three ferryd sidecars and two nginx proxies, all started
//! once, pinned to the same CPU, and kept running for the whole benchmark so every path sees warm
//! pools and the same neighbours.
//!
//! * `bench-self`: ferryd with the app; the self path calls it with its own app ID.
//! * `bench-caller` → `bench-callee`: the remote path; the caller has no app (the load generator
//!   plays the calling app), the callee fronts the app. Both resolve each other through a private
//!   `FERRY_HOME` registry.
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
    nginx_port: u16,
}

pub const SELF_ID: &str = "bench-self";
pub const CALLER_ID: &str = "bench-caller";
pub const CALLEE_ID: &str = "bench-callee";
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
            nginx_port: 0,
        };

        let app_port = sut.app_port;
        let app = Launch::new(&cfg.bench_exe).args(["app", "--port", &app_port.to_string()]);
        sut.spawn(cfg, Role::App, app)?;
        wait_for("the app", STARTUP, || probe::accepts(local(app_port)))?;

        let ferryd = |id: &str, app: Option<u16>| {
            let mut l = Launch::new(&cfg.ferryd)
                .args(["--app-id", id, "--dapr-http-port", "0"])
                .args(["--dapr-listen-addresses", "127.0.0.1"]);
            if let Some(p) = app {
                l = l.args(["--app-port", &p.to_string()]);
            }
            // A clean environment: nothing from the machine's FERRY_* or NAMESPACE.
            l.env = Some(vec![
                ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
                ("HOME".into(), home.clone().into_os_string()),
                ("FERRY_HOME".into(), home.clone().into_os_string()),
            ]);
            l
        };
        sut.self_http = sut.start_ferryd(cfg, Role::FerrydSelf, ferryd(SELF_ID, Some(app_port)))?;
        sut.start_ferryd(cfg, Role::FerrydCallee, ferryd(CALLEE_ID, Some(app_port)))?;
        sut.caller_http = sut.start_ferryd(cfg, Role::FerrydCaller, ferryd(CALLER_ID, None))?;

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
