//! The proxies under test: levee (its release binary), optionally an older levee build
//! ("levee-before", from [`LEVEE_BEFORE`]), HAProxy and nginx as child processes on free
//! `127.0.0.1` ports, each with a config written into its own temp dir, plus "direct"
//! (the client talks to the backend itself, no proxy).
//!
//! Every proxy gets the same thread count and the same limits, expressed in its own
//! terms (see [`Setup`]). A [`Running`] proxy is stopped on [`Running::stop`] or on
//! drop (SIGTERM, then SIGKILL after [`STOP_GRACE`]), together with its children
//! (nginx's workers), so a failed bench leaves nothing behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a proxy may take to answer its first request after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a proxy may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The environment variable naming an older levee binary to compare with (same CLI,
/// same config format), run as [`Kind::LeveeBefore`].
pub const LEVEE_BEFORE: &str = "LEVEE_BEFORE";

/// The value of [`LEVEE_BEFORE`], `None` when unset or empty.
pub fn levee_before_var() -> Option<OsString> {
    std::env::var_os(LEVEE_BEFORE).filter(|v| !v.is_empty())
}

/// One thing the load goes through. The order is the order of the rows in the tables
/// sorted by kind (levee-before next to levee).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The levee of this checkout.
    Levee,
    /// The same build with `server.runtime = "multi_thread"` (one work-stealing
    /// runtime) instead of the default per-thread runtimes: the runtime layout
    /// comparison.
    LeveeMulti,
    /// An older levee build from [`LEVEE_BEFORE`], configured exactly like levee.
    LeveeBefore,
    Haproxy,
    Nginx,
    /// `examples/hyper_floor`: the least proxy on hyper (one current-thread runtime,
    /// pooled client connections, one backend, nothing else), to show what levee's own
    /// work costs over hyper's. Raw and memory sections only (it has no limits).
    HyperFloor,
    /// `examples/httparse_floor`: the least forwarder on tokio and httparse (one
    /// current-thread runtime, pooled backend connections, heads forwarded as they
    /// came, `Content-Length` bodies only), the floor under levee's own HTTP/1.1 codec.
    /// Raw and memory sections only, as hyper-floor.
    ParseFloor,
    /// No proxy: the client connects to the (first) backend.
    Direct,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Levee,
        Kind::LeveeMulti,
        Kind::LeveeBefore,
        Kind::Haproxy,
        Kind::Nginx,
        Kind::HyperFloor,
        Kind::ParseFloor,
        Kind::Direct,
    ];

    /// What runs without `--only`: every kind, levee-before only when [`LEVEE_BEFORE`]
    /// is set.
    pub fn defaults() -> Vec<Kind> {
        let before = levee_before_var().is_some();
        Kind::ALL
            .into_iter()
            .filter(|&k| k != Kind::LeveeBefore || before)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Levee => "levee",
            Kind::LeveeMulti => "levee-mt",
            Kind::LeveeBefore => "levee-before",
            Kind::HyperFloor => "hyper-floor",
            Kind::ParseFloor => "httparse-floor",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Direct => "direct",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_proxy(self) -> bool {
        self != Kind::Direct
    }

    /// One of the floors: a least proxy with no limits, one backend and no config file.
    pub fn is_floor(self) -> bool {
        matches!(self, Kind::HyperFloor | Kind::ParseFloor)
    }

    /// levee, this build or the older one: same config, same CLI, an admin listener.
    pub fn is_levee(self) -> bool {
        matches!(self, Kind::Levee | Kind::LeveeMulti | Kind::LeveeBefore)
    }
}

/// Where the binaries are; `None` when not installed.
#[derive(Debug, Clone)]
pub struct Tools {
    pub levee: Option<PathBuf>,
    /// The older levee of [`LEVEE_BEFORE`], when that names an executable file.
    pub levee_before: Option<PathBuf>,
    /// [`LEVEE_BEFORE`] as given (for the skip message and the command line).
    pub levee_before_var: Option<OsString>,
    pub haproxy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    /// `examples/hyper_floor` next to levee's binary (scripts/bench.sh builds it).
    pub hyper_floor: Option<PathBuf>,
    /// `examples/httparse_floor`, the same way.
    pub parse_floor: Option<PathBuf>,
    /// `examples/grpc_backend` next to levee's binary (scripts/bench.sh builds it): the
    /// grpc section's backend.
    pub grpc_backend: Option<PathBuf>,
    pub wrk: Option<PathBuf>,
    /// nghttp2's HTTP/2 load generator (Debian's nghttp2-client): the grpc section's
    /// client.
    pub h2load: Option<PathBuf>,
}

impl Tools {
    /// levee is the binary cargo built for this bench (the bench profile inherits
    /// release); levee-before is the file [`LEVEE_BEFORE`] names (made absolute); the
    /// others are looked up in `PATH` and the sbin dirs, where Debian puts haproxy and
    /// nginx.
    pub fn find() -> Tools {
        let levee = PathBuf::from(env!("CARGO_BIN_EXE_levee"));
        let levee_before_var = levee_before_var();
        let levee_before = levee_before_var
            .as_ref()
            .and_then(|v| std::fs::canonicalize(v).ok())
            .filter(|p| is_executable(p));
        let example = |name: &str| {
            levee
                .parent()
                .map(|d| d.join("examples").join(name))
                .filter(|p| is_executable(p))
        };
        Tools {
            hyper_floor: example("hyper_floor"),
            parse_floor: example("httparse_floor"),
            grpc_backend: example("grpc_backend"),
            levee: is_executable(&levee).then_some(levee),
            levee_before,
            levee_before_var,
            haproxy: which("haproxy"),
            nginx: which("nginx"),
            wrk: which("wrk"),
            h2load: which("h2load"),
        }
    }

    /// The binary of `kind`, or why it cannot run. Direct needs none.
    pub fn binary(&self, kind: Kind) -> Result<Option<&Path>, String> {
        let found = match kind {
            Kind::Direct => return Ok(None),
            Kind::Levee | Kind::LeveeMulti => &self.levee,
            Kind::LeveeBefore => &self.levee_before,
            Kind::Haproxy => &self.haproxy,
            Kind::Nginx => &self.nginx,
            Kind::HyperFloor => &self.hyper_floor,
            Kind::ParseFloor => &self.parse_floor,
        };
        match found {
            Some(path) => Ok(Some(path)),
            None if kind.is_floor() => Err(format!(
                "{} not built (cargo build --release --example {}); skipped",
                kind.name(),
                kind.name().replace('-', "_")
            )),
            None if kind == Kind::LeveeBefore => Err(match &self.levee_before_var {
                None => format!(
                    "{} binary not given (set {LEVEE_BEFORE} to an older levee build); skipped",
                    kind.name()
                ),
                Some(v) => format!(
                    "{} binary {} ({LEVEE_BEFORE}) is not an executable file; skipped",
                    kind.name(),
                    Path::new(v).display()
                ),
            }),
            None => Err(format!(
                "{} binary not found (Debian: apt-get install {}); skipped",
                kind.name(),
                kind.name()
            )),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Soft limit of open files of this process (children inherit it), from
/// `/proc/self/limits`; `None` if it cannot be read. "unlimited" reads as `u64::MAX`.
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// What every proxy is configured to do, in levee's terms.
#[derive(Debug, Clone)]
pub struct Setup {
    pub backends: Vec<SocketAddr>,
    /// Worker threads (nginx: worker processes).
    pub threads: usize,
    /// Per-backend concurrency cap (levee `max_inflight`, HAProxy `maxconn`, nginx
    /// `max_conns`); `None`: no cap (levee gets a cap far above the load).
    pub max_conns: Option<u32>,
    /// levee `queue_depth`; HAProxy and nginx cannot bound a queue's length.
    pub queue_depth: u32,
    /// levee `queue_timeout_ms` and HAProxy `timeout queue`; nginx has no queue.
    pub queue_timeout: Duration,
    /// Most client connections the proxy must accept (memory section: 10,000 + slack).
    pub max_clients: u32,
    /// Failure zone of each backend, in the order of `backends`; empty: no zones. levee
    /// runs in the first backend's zone (`server.zone`) and prefers it; HAProxy and
    /// nginx have no zones and balance over all backends.
    pub zones: Vec<String>,
    /// Active health checks of `/health`; `None`: none. nginx gets none either way:
    /// open-source nginx has only passive checks (`max_fails`, `fail_timeout`).
    pub health: Option<HealthChecks>,
    /// Send an idempotent request whose backend answered 500, 502, 503 or 504 (or
    /// failed to answer) to another backend: levee `retry_on_status`, HAProxy
    /// `retry-on` with `option redispatch 1`, nginx `proxy_next_upstream`.
    pub retry_5xx: bool,
    /// levee: the overload section's early-shedding `[upstream.levels]` (caution at a
    /// quarter of the queue, danger at half); `false`: levee's default levels.
    pub early_levels: bool,
    /// A TLS listener as well, serving this certificate (levee and nginx only).
    pub tls: Option<TlsFiles>,
    /// levee only: TOML written right after the `[upstream.limits]` keys, so more keys
    /// of that table (`mode = "shadow"`) and then further upstream tables
    /// (`[upstream.fairness]`); empty for the sections every proxy runs.
    pub levee_extra: String,
    /// levee only: more TOML for the upstream's table (e.g. `[upstream.adaptive]`);
    /// HAProxy and nginx have no such thing. Empty: none.
    pub levee_upstream: String,
    /// The backends speak gRPC over h2c and so do the clients: levee `protocol =
    /// "h2"`, nginx `grpc_pass` in a server listening with `http2` (h2c only: it then
    /// takes no HTTP/1.1); readiness is a gRPC health check. HAProxy and hyper-floor are
    /// not set up for it.
    pub grpc: bool,
}

/// A certificate and its key (PEM) for the TLS listeners.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Active health checks, the same for levee and HAProxy.
#[derive(Debug, Clone, Copy)]
pub struct HealthChecks {
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing probes in a row that bring a backend back.
    pub rise: u32,
    /// Failing probes in a row that take a backend out.
    pub fall: u32,
}

/// A started proxy (or direct): where to send the load.
pub struct Running {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The TLS listener, when [`Setup::tls`] asked for one.
    pub tls_addr: Option<SocketAddr>,
    /// levee's admin listener (`/metrics`), levee-before's too.
    pub admin: Option<SocketAddr>,
    /// When the process was spawned (for direct: when [`Running::start`] was called).
    pub started: Instant,
    /// From spawn to the first 2xx answer through the proxy.
    pub ready_after: Duration,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts `kind` per `setup` on a free port and returns once it answered a request.
    pub async fn start(kind: Kind, setup: &Setup, tools: &Tools) -> Result<Running, String> {
        if setup.grpc && (kind == Kind::Haproxy || kind.is_floor()) {
            return Err(format!("{} is not set up for gRPC; skipped", kind.name()));
        }
        if kind.is_floor() && (setup.backends.len() != 1 || setup.max_conns.is_some()) {
            return Err(format!(
                "{} has no limits and one backend: raw and memory sections only; skipped",
                kind.name()
            ));
        }
        let Some(binary) = tools.binary(kind)? else {
            let addr = *setup.backends.first().ok_or("no backend")?;
            return Ok(Running {
                kind,
                addr,
                tls_addr: None,
                admin: None,
                started: Instant::now(),
                ready_after: Duration::ZERO,
                child: None,
                dir: None,
            });
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("levee-bench-{}-", kind.name()))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let admin = match kind {
            Kind::Levee | Kind::LeveeMulti | Kind::LeveeBefore => {
                Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
            }
            _ => None,
        };
        let d = dir.path();
        let (conf_name, text) = match kind {
            Kind::Levee | Kind::LeveeBefore => ("levee.toml", levee_config(addr, admin, setup, "")),
            Kind::LeveeMulti => (
                "levee.toml",
                levee_config(addr, admin, setup, "runtime = \"multi_thread\"\n"),
            ),
            Kind::Haproxy => ("haproxy.cfg", haproxy_config(addr, setup)),
            Kind::Nginx => ("nginx.conf", nginx_config(addr, setup, d)),
            // No config file: its two addresses are its arguments.
            Kind::HyperFloor | Kind::ParseFloor => {
                ("args", format!("{addr} {}", setup.backends[0]))
            }
            Kind::Direct => unreachable!("direct has no binary"),
        };
        let tls_addr = match &setup.tls {
            Some(_) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?))),
            None => None,
        };
        let text = match (&setup.tls, tls_addr) {
            (Some(files), Some(tls_addr)) => with_tls(kind, text, tls_addr, files)?,
            _ => text,
        };
        let args = match kind {
            Kind::HyperFloor | Kind::ParseFloor => {
                vec![addr.to_string(), setup.backends[0].to_string()]
            }
            _ => Vec::new(),
        };
        let spawned = Spawn {
            kind,
            binary,
            dir,
            addr,
            tls_addr,
            admin,
            conf_name,
            text,
            args,
        };
        let ready = ReadyCheck {
            grpc: setup.grpc,
            ..ReadyCheck::default()
        };
        spawned.run(&ready).await
    }

    /// Starts `kind` (levee, levee-before or HAProxy) with the config `config` writes
    /// for its listen address and, for levee, its admin address, and returns once
    /// `ready` answered 2xx: for processes the bench configures beyond [`Setup`] (the
    /// edge section's levee with virtual hosts and the PROXY protocol, and HAProxy as a
    /// TCP relay in front of it).
    pub async fn start_custom(
        kind: Kind,
        tools: &Tools,
        config: impl FnOnce(SocketAddr, Option<SocketAddr>) -> String,
        ready: &ReadyCheck,
    ) -> Result<Running, String> {
        let conf_name = match kind {
            Kind::Levee | Kind::LeveeMulti | Kind::LeveeBefore => "levee.toml",
            Kind::Haproxy => "haproxy.cfg",
            other => return Err(format!("no custom config for {}", other.name())),
        };
        let binary = tools
            .binary(kind)?
            .ok_or_else(|| format!("{} has no binary", kind.name()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("levee-bench-{}-", kind.name()))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let admin = if kind.is_levee() {
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
        } else {
            None
        };
        let spawned = Spawn {
            kind,
            binary,
            dir,
            addr,
            tls_addr: None,
            admin,
            conf_name,
            text: config(addr, admin),
            args: Vec::new(),
        };
        spawned.run(ready).await
    }

    /// The proxy's main process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the proxy and its children (nginx workers), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let mut pids = vec![pid];
        pids.extend(children(pid));
        pids.iter().map(|&p| vm_rss_kib(p)).sum()
    }

    /// CPU time (user + system) the proxy and its children (nginx workers) used so
    /// far; `None` for direct. Read before and after a run: the difference over the
    /// requests served is the proxy's CPU cost per request, a figure that noise from
    /// other processes on the machine disturbs far less than requests/s.
    pub fn cpu_time(&self) -> Option<Duration> {
        let (user, system) = self.cpu_split()?;
        Some(user + system)
    }

    /// [`Running::cpu_time`] as user and system time apart: a change to the proxy's
    /// own code shows in the first, while the kernel's part of a request (loopback TCP
    /// on both sides) stays the same.
    pub fn cpu_split(&self) -> Option<(Duration, Duration)> {
        let pid = self.pid()?;
        let (mut user, mut system) = (0u64, 0u64);
        for p in std::iter::once(pid).chain(children(pid)) {
            let (u, s) = cpu_ticks(p)?;
            user += u;
            system += s;
        }
        let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second());
        Some((secs(user), secs(system)))
    }

    /// levee's `levee_shed_total` by reason, summed over upstreams and classes, from
    /// its admin `/metrics`; `None` for other proxies or when it cannot be read.
    pub async fn levee_sheds(&self) -> Option<BTreeMap<String, f64>> {
        self.levee_counter("levee_shed_total", "reason").await
    }

    /// levee's counter `name` from its admin `/metrics`, summed by the value of its
    /// label `label` (`?` where a line has none); `None` for other proxies or when
    /// `/metrics` cannot be read.
    pub async fn levee_counter(&self, name: &str, label: &str) -> Option<BTreeMap<String, f64>> {
        let admin = self.admin?;
        let text = tokio::time::timeout(Duration::from_secs(2), get(admin, "/metrics"))
            .await
            .ok()?
            .ok()?;
        let prefix = format!("{name}{{");
        let key = format!("{label}=\"");
        let mut sums = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            let value_of_label = line
                .split(key.as_str())
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *sums.entry(value_of_label.to_owned()).or_default() += value;
        }
        Some(sums)
    }

    /// The last lines the proxy wrote to its logs, to explain a failure.
    pub fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let mut out = String::new();
        for name in ["stderr.log", "error.log"] {
            if let Ok(text) = std::fs::read_to_string(dir.path().join(name)) {
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(8)..] {
                    let _ = writeln!(out, "    {name}: {line}");
                }
            }
        }
        out
    }

    /// Waits for a 2xx to `ready`'s request or, with `ready.grpc`, for a gRPC health
    /// check answered SERVING.
    async fn wait_ready(&mut self, ready: &ReadyCheck) -> Result<(), String> {
        let grpc = ready.grpc;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{} exited at start ({status}):\n{}",
                        self.kind.name(),
                        self.log_tail()
                    ));
                }
            }
            let answered = if grpc {
                tokio::time::timeout(Duration::from_secs(1), crate::grpc::check(self.addr))
                    .await
                    .is_ok_and(|r| r.is_ok())
            } else {
                tokio::time::timeout(Duration::from_secs(1), probe(self.addr, ready))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|status| (200..300).contains(&status)))
            };
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer {} on {} within {START_TIMEOUT:?}:\n{}",
                    self.kind.name(),
                    if grpc { "a gRPC health check" } else { "2xx" },
                    self.addr,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; children too.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let kids = children(child.id());
        signal("TERM", child.id());
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill_now(&mut child, &kids);
    }
}

/// A proxy's process, configured and about to start.
struct Spawn<'a> {
    kind: Kind,
    binary: &'a Path,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    conf_name: &'a str,
    text: String,
    /// hyper-floor's arguments (it has no config file).
    args: Vec<String>,
}

impl Spawn<'_> {
    /// Writes the config, spawns the process and waits until `ready` answers 2xx.
    async fn run(self, ready: &ReadyCheck) -> Result<Running, String> {
        let d = self.dir.path();
        let conf = d.join(self.conf_name);
        std::fs::write(&conf, &self.text).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let log = std::fs::File::create(d.join("stderr.log")).map_err(|e| format!("log: {e}"))?;
        let started = Instant::now();
        let mut cmd = Command::new(self.binary);
        match self.kind {
            Kind::Levee | Kind::LeveeMulti | Kind::LeveeBefore => {
                cmd.arg("run").arg("--config").arg(&conf)
            }
            Kind::Haproxy => cmd.arg("-db").arg("-f").arg(&conf),
            Kind::Nginx => cmd
                .arg("-p")
                .arg(d)
                .arg("-e")
                .arg(d.join("error.log"))
                .arg("-c")
                .arg(&conf),
            Kind::HyperFloor | Kind::ParseFloor => cmd.args(&self.args),
            Kind::Direct => unreachable!("direct has no binary"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        let mut running = Running {
            kind: self.kind,
            addr: self.addr,
            tls_addr: self.tls_addr,
            admin: self.admin,
            started,
            ready_after: Duration::ZERO,
            child: Some(child),
            dir: Some(self.dir),
        };
        running.wait_ready(ready).await?;
        running.ready_after = started.elapsed();
        Ok(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let kids = children(child.id());
            kill_now(&mut child, &kids);
        }
    }
}

fn kill_now(child: &mut Child, kids: &[u32]) {
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    for &pid in kids {
        if Path::new(&format!("/proc/{pid}")).exists() {
            signal("KILL", pid);
        }
    }
}

/// Sends a signal with `kill(1)` (the bench uses no libc).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Direct children of `pid`, from `/proc/*/stat`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces: fields restart after the last ')'.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// utime + stime of one process (all its threads), without its children.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let (user, system) = cpu_ticks(pid)?;
    Some(Duration::from_secs_f64(
        (user + system) as f64 / clock_ticks_per_second(),
    ))
}

/// utime and stime of one process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// `getconf CLK_TCK` (100 on Linux almost everywhere), read once.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t: &f64| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `VmRSS` of one process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// `GET path` on a levee admin listener, its body as JSON; `None` when it does not
/// answer within 2 s or the body is not JSON.
pub async fn admin_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let text = tokio::time::timeout(Duration::from_secs(2), get(admin, path))
        .await
        .ok()?
        .ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// `GET path` with `connection: close`; the whole response, head and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// How [`Running::start`] tells a proxy is up: one `GET /ready` with this `host`,
/// after a PROXY v1 header when `proxy_protocol` (a listener that expects one closes a
/// connection without it).
#[derive(Debug, Clone)]
pub struct ReadyCheck {
    pub host: String,
    pub proxy_protocol: bool,
    /// Ready once a gRPC health check answers SERVING (the grpc section's proxies).
    pub grpc: bool,
}

impl Default for ReadyCheck {
    fn default() -> ReadyCheck {
        ReadyCheck {
            host: "bench".into(),
            proxy_protocol: false,
            grpc: false,
        }
    }
}

/// One `GET /ready` on a fresh connection, as `check` says; the response's status.
async fn probe(addr: SocketAddr, check: &ReadyCheck) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = String::new();
    if check.proxy_protocol {
        let local = stream.local_addr()?;
        let _ = write!(
            req,
            "PROXY TCP4 {} {} {} {}\r\n",
            local.ip(),
            addr.ip(),
            local.port(),
            addr.port()
        );
    }
    let _ = write!(
        req,
        "GET /ready HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        check.host
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    stream.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(12)]).into_owned();
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3)?.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {head:?}")))
}

/// `config` (levee's or nginx's, as made for `kind`) with a TLS listener on `addr`
/// serving `files`: levee `[server.tls]` (it offers TLS 1.2 and 1.3; clients that can
/// choose 1.3), nginx `listen … ssl` with `ssl_protocols TLSv1.3` and its default
/// session tickets, as levee has them.
fn with_tls(
    kind: Kind,
    config: String,
    addr: SocketAddr,
    files: &TlsFiles,
) -> Result<String, String> {
    let (cert, key) = (files.cert.display(), files.key.display());
    let (at, insert) = match kind {
        Kind::Levee | Kind::LeveeMulti => (
            "\n[[upstream]]",
            format!("\n[server.tls]\nlisten = [\"{addr}\"]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
        ),
        Kind::Nginx => (
            "        location / {",
            format!(
                "        listen {addr} ssl http2 backlog=4096;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n        ssl_protocols TLSv1.3;\n"
            ),
        ),
        other => return Err(format!("no TLS listener set up for {}", other.name())),
    };
    let i = config
        .find(at)
        .ok_or_else(|| format!("{}: no place for the TLS listener", kind.name()))?;
    Ok(format!("{}{insert}{}", &config[..i], &config[i..]))
}

/// levee: one upstream, least in-flight, the limits of `setup`, the client cap of
/// HAProxy's `maxconn`, logs at levee's defaults; health checks, zones and status
/// retries as `setup` asks (none of them in the raw, overload, memory and shed
/// sections).
/// `extra` goes into `[server]` (levee-before gets none: an older build may not know
/// newer keys).
fn levee_config(addr: SocketAddr, admin: Option<SocketAddr>, s: &Setup, extra: &str) -> String {
    let max_inflight = s.max_conns.unwrap_or(100_000);
    let zone = s
        .zones
        .first()
        .map_or(String::new(), |z| format!("zone = \"{z}\"\n"));
    let mut retry = if s.retry_5xx {
        "retry_on_status = [500, 502, 503, 504]\n"
    } else {
        ""
    }
    .to_owned();
    if s.grpc {
        retry.push_str("protocol = \"h2\"\n");
    }
    let mut t = format!(
        r#"[server]
listen = ["{addr}"]
threads = {threads}
{extra}{zone}grace_period_ms = 200
max_connections = {max_connections}
{admin}

[[upstream]]
name = "bench"
routes = ["/"]
balance = "least_inflight"
{retry}
[upstream.limits]
max_inflight = {max_inflight}
queue_depth = {depth}
queue_timeout_ms = {timeout}
"#,
        threads = s.threads,
        // The same client cap as HAProxy's `maxconn` (levee's default, derived from the
        // open-files limit, would refuse some of the memory section's 10,000).
        max_connections = s.max_clients.max(2000),
        admin = admin.map_or(String::new(), |a| format!("admin_listen = \"{a}\"")),
        depth = s.queue_depth,
        timeout = s.queue_timeout.as_millis().max(1),
    );
    t.push_str(&s.levee_extra);
    if s.early_levels && s.queue_depth >= 4 && s.max_conns.is_some() {
        // Shed early under sustained overload: the queue only absorbs bursts.
        let _ = write!(
            t,
            "\n[upstream.levels]\ncaution = {{ utilization = 0.9, queue = {c} }}\ndanger = {{ queue = {d} }}\ncooldown_ms = 1000\n",
            c = (s.queue_depth / 4).max(1),
            d = (s.queue_depth / 2).max(1),
        );
    }
    if !s.levee_upstream.is_empty() {
        let _ = writeln!(t, "\n{}", s.levee_upstream);
    }
    if let Some(h) = &s.health {
        let _ = write!(
            t,
            "\n[upstream.health]\npath = \"/health\"\ninterval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n",
            h.interval.as_millis().max(1),
            h.timeout.as_millis().max(1),
            h.rise,
            h.fall,
        );
    }
    for (i, b) in s.backends.iter().enumerate() {
        let _ = write!(t, "\n[[upstream.backend]]\naddress = \"{b}\"\n");
        if let Some(z) = s.zones.get(i) {
            let _ = writeln!(t, "zone = \"{z}\"");
        }
    }
    t
}

/// HAProxy: `maxconn` per server and `timeout queue`; requests past a full server
/// wait in the backend queue (unbounded in length) until a slot frees or the queue
/// timeout answers 503. No logs. When `setup` asks for them: health checks (`option
/// httpchk`, `check inter … rise … fall …`, plus `observe layer7 error-limit 5
/// on-error mark-down`, levee's default passive ejection) and retries (`retry-on` on
/// connect failures, empty responses, response timeouts and 500/502/503/504, each
/// retry redispatched to another server, at most 3).
fn haproxy_config(addr: SocketAddr, s: &Setup) -> String {
    let maxconn = s.max_clients.max(2000);
    let mut backend_opts = String::new();
    if s.health.is_some() {
        backend_opts.push_str("    option httpchk GET /health\n");
    }
    if s.retry_5xx {
        backend_opts.push_str(
            "    retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response response-timeout 500 502 503 504\n",
        );
    }
    let check_timeout = s.health.map_or(String::new(), |h| {
        format!("    timeout check {}ms\n", h.timeout.as_millis().max(1))
    });
    let mut t = format!(
        r#"global
    nbthread {threads}
    maxconn {maxconn}
    # Idle client connections need one descriptor each, not the two per connection
    # haproxy reserves: run even when `ulimit -n` is below 2 x maxconn.
    no strict-limits

defaults
    mode http
    maxconn {maxconn}
    option http-keep-alive
    timeout connect 1s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout queue {queue}ms
{check_timeout}
frontend fe
    bind {addr}
    default_backend be

backend be
    balance leastconn
    http-reuse always
{backend_opts}"#,
        threads = s.threads,
        queue = s.queue_timeout.as_millis().max(1),
    );
    for (i, b) in s.backends.iter().enumerate() {
        let _ = write!(t, "    server s{i} {b}");
        if let Some(n) = s.max_conns {
            let _ = write!(t, " maxconn {n}");
        }
        if let Some(h) = &s.health {
            // levee's passive ejection (on by default: 5 failed requests in a row, 5xx
            // included) in HAProxy's terms: 5 bad answers in a row mark a server down.
            let _ = write!(
                t,
                " check inter {}ms rise {} fall {} observe layer7 error-limit 5 on-error mark-down",
                h.interval.as_millis().max(1),
                h.rise,
                h.fall
            );
        }
        t.push('\n');
    }
    t
}

/// nginx: `max_conns` per server in a shared-memory `zone` (without one the cap is
/// per worker). Open-source nginx has no upstream `queue` (NGINX Plus only): a request
/// finding every server at `max_conns` fails at once with 502 "no live upstreams",
/// mapped here to 503 so it counts as a shed. Access log off, error log at `crit`.
/// With `retry_5xx`, `proxy_next_upstream` adds `http_500 http_502 http_503
/// http_504` to its default `error timeout` (tries: every server); such an answer also
/// counts as one of the server's `max_fails` (default 1 in `fail_timeout`, 10 s),
/// nginx's passive check. No active checks: open-source nginx has none.
fn nginx_config(addr: SocketAddr, s: &Setup, dir: &Path) -> String {
    let nofile = nofile_limit().unwrap_or(1024).min(1_000_000);
    let worker_connections = (nofile.saturating_sub(64)).clamp(512, 32_768);
    let d = dir.display();
    let mut servers = String::new();
    for b in &s.backends {
        let _ = write!(servers, "        server {b}");
        if let Some(n) = s.max_conns {
            let _ = write!(servers, " max_conns={n}");
        }
        servers.push_str(";\n");
    }
    let mut location = if s.max_conns.is_some() {
        "            error_page 502 =503 @shed;\n".to_owned()
    } else {
        String::new()
    };
    if s.retry_5xx {
        location.push_str(
            "            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;\n",
        );
    }
    // gRPC: h2c in front (`listen … http2`), `grpc_pass` behind. nginx's grpc module
    // carries one call per upstream connection at a time (no multiplexing), so it
    // keeps as many idle connections as calls can be in flight (the bench's client
    // keeps at most 16 x 10); with `keepalive 64` it would open and close connections
    // to the backend under load.
    let (listen, pass, keepalive) = if s.grpc {
        ("http2 backlog=4096", "grpc_pass grpc://be;", 512)
    } else {
        (
            "backlog=4096",
            "proxy_pass http://be;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";",
            64,
        )
    };
    format!(
        r#"daemon off;
worker_processes {threads};
pid {d}/nginx.pid;
error_log {d}/error.log crit;
worker_rlimit_nofile {nofile};

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000000;

    upstream be {{
        zone be 256k;
        least_conn;
{servers}        keepalive {keepalive};
        keepalive_requests 1000000;
    }}

    server {{
        listen {addr} {listen};
        location / {{
            {pass}
{location}        }}
        location @shed {{
            default_type application/json;
            return 503 '{{"error":"overloaded"}}\n';
        }}
    }}
}}
"#,
        threads = s.threads,
    )
}
