//! Network partitions, delay and loss between levee and its backends.
//!
//! **Partitions** (needs root and iproute2; skips cleanly otherwise). Two network
//! namespaces made for this run, joined by one veth pair whose two 10.213.X.0/30
//! addresses exist only inside them:
//!
//! ```text
//!  netns levee-lv-PID                                   netns levee-za-PID
//!  ┌────────────────────────────────────────┐  veth     ┌─────────────────────────┐
//!  │ levee binary   127.0.0.1 (proxy, admin)│ lvlPID ── │ lvzPID 10.213.X.2       │
//!  │ zone b: b1, b2 127.0.0.1               │ 10.213.X.1│ zone a: a1, a2          │
//!  │ load generator (closed loop, 6 conns)  │           │ (this test binary again)│
//!  └────────────────────────────────────────┘           └─────────────────────────┘
//! ```
//!
//! levee runs in its own namespace rather than the root one, so that no address or
//! route is ever added to the host's network. The replicas of each zone are started by
//! this same test binary, re-executed with `ip netns exec NS <test binary> --exact
//! partition_role` and `LEVEE_PARTITION_ROLE=replicas|scenario` (levee has no
//! replica-only mode). Zone a is local to levee (`server.zone = "a"`); zone b is the
//! spill-over. Then zone a is cut off in several ways while the load runs, and healed:
//! - `blackhole`: zone a's end of the veth goes down, packets to it vanish (connects
//!   and reads time out), like a cut cable or a dead switch;
//! - `local link down`: levee's end goes down, the route disappears, connects fail at
//!   once with `ENETUNREACH`;
//! - `reject`: with `nft`, zone a answers every TCP segment with a reset; without it, a
//!   `prohibit` route on levee's side refuses connects at once (`EACCES`);
//! - `nft drop` (only with `nft`): zone a drops every TCP segment silently.
//!
//! Each variant reports the detection time (partition until `/status` shows both
//! zone-a backends not routable), the failed requests and when failures stopped, the
//! longest answer, and the time until zone a serves again after healing. A Drop guard
//! kills what runs in the two namespaces and deletes them (which also removes the veth
//! pair, the routes and nft tables), on success, failure or panic; leftovers of a run that
//! was killed are swept at the next start.
//!
//! **Delay and loss** (no privileges; this kernel has no netem): a user-space TCP proxy
//! in this file sits between levee and one of two replicas, forwarding each chunk after
//! a configurable delay, or killing the connection with a configurable probability per
//! request. The test shows levee's answers through it: a small delay shifts traffic to
//! the other replica without errors; a delay past the read timeout gives 504s until the
//! backend is ejected or marked down; loss gives clean 502s or retries; healing brings
//! the replica back.
//!
//! Both tests are bounded (about 30 s and 10 s). Run with `--nocapture` for the figures.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{admin_json, LeveeProcess};
use common::*;
use http_body_util::{BodyExt, Full};
use levee::demo::replica::{Replica, ReplicaConfig};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Selects what a re-executed test binary does: `replicas` or `scenario`.
const ROLE_ENV: &str = "LEVEE_PARTITION_ROLE";
/// Role `replicas`: the address to bind, and the names, comma-separated.
const BIND_ENV: &str = "LEVEE_PARTITION_BIND";
const NAMES_ENV: &str = "LEVEE_PARTITION_NAMES";
/// Role `scenario`: zone a's replicas as `name=addr,…`, and the topology.
const ZONE_A_ENV: &str = "LEVEE_PARTITION_ZONE_A";
const TOPOLOGY_ENV: &str = "LEVEE_PARTITION_TOPOLOGY";
/// Marks the lines a child prints for its parent (libtest may prefix them).
const MARK: &str = "@@partition ";

/// Whole partition test, child processes included.
const PARTITION_LIMIT: Duration = Duration::from_secs(55);
/// Health checks: every 200 ms, 150 ms timeout, fall 2 and rise 2.
const INTERVAL_MS: u64 = 200;
const CONNECT_MS: u64 = 300;
const READ_MS: u64 = 1000;
/// Longest a load request may take before it counts as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ load

/// One answered (or failed) request of the load.
#[derive(Clone, Copy, Debug)]
struct Sample {
    sent: Duration,
    done: Duration,
    /// 0: transport error or client timeout (hung).
    status: u16,
    hung: bool,
    /// A POST (not idempotent: levee retries it only when the connect itself failed).
    post: bool,
    /// The replica's zone letter (`a`, `b`), from `x-replica`; `-` for none.
    zone: u8,
}

impl Sample {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Closed-loop load: `workers` keep-alive connections, each sending requests back to
/// back with a 5 ms pause, reconnecting after an error; the first `posts` workers send
/// POSTs with a small body, the others GETs. Bounded by the stop flag and a cap of
/// 50,000 requests a worker.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Every transport error, with when, what and on which connection.
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    t0: Instant,
}

impl Load {
    fn start(addr: SocketAddr, workers: usize, posts: usize, t0: Instant) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|worker| {
                let post = worker < posts;
                let (samples, errors, stop) = (samples.clone(), errors.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> =
                        None;
                    // Status of the previous answer on the current connection (0: fresh).
                    let mut previous = 0u16;
                    for _ in 0..50_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = t0.elapsed();
                        let reused = previous;
                        let result = tokio::time::timeout(CLIENT_TIMEOUT, async {
                            if conn.as_mut().is_none_or(|c| c.is_closed()) {
                                previous = 0;
                                conn = Some(open(addr).await.ok_or("connect failed")?);
                            }
                            let c = conn.as_mut().ok_or("no connection")?;
                            c.ready().await.map_err(|e| format!("not ready: {e}"))?;
                            let req = if post {
                                http::Request::post("/p")
                                    .header("host", "test")
                                    .body(Full::new(Bytes::from_static(b"payload")))
                                    .map_err(|e| e.to_string())?
                            } else {
                                get("/p")
                            };
                            let resp = c
                                .send_request(req)
                                .await
                                .map_err(|e| format!("request: {e}"))?;
                            let zone = resp
                                .headers()
                                .get("x-replica")
                                .and_then(|v| v.as_bytes().first().copied())
                                .unwrap_or(b'-');
                            let status = resp.status().as_u16();
                            resp.into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("body of a {status}: {e}"))?;
                            Ok::<_, String>((status, zone))
                        })
                        .await;
                        let (status, zone, hung) = match result {
                            Ok(Ok((status, zone))) => (status, zone, false),
                            Ok(Err(e)) => {
                                errors.lock().unwrap().push(format!(
                                    "{} ms, {}, {}: {e}",
                                    ms(sent),
                                    if post { "POST" } else { "GET" },
                                    if reused == 0 {
                                        "fresh connection".to_owned()
                                    } else {
                                        format!("connection reused after a {reused}")
                                    }
                                ));
                                (0, b'-', false)
                            }
                            Err(_) => (0, b'-', true),
                        };
                        previous = status;
                        if status == 0 {
                            conn = None;
                        }
                        samples.lock().unwrap().push(Sample {
                            sent,
                            done: t0.elapsed(),
                            status,
                            hung,
                            post,
                            zone,
                        });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            samples,
            errors,
            stop,
            tasks,
            t0,
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Transport errors so far, and forgets them.
    fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap())
    }

    fn samples_since(&self, from: Duration) -> Vec<Sample> {
        let all = self.samples.lock().unwrap();
        all.iter().filter(|s| s.sent >= from).copied().collect()
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let all = self.samples.lock().unwrap();
        all.clone()
    }
}

async fn open(addr: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Routable flags of the backends whose address starts with `prefix`, from `/status`.
async fn routable(admin: SocketAddr, prefix: &str) -> Option<Vec<bool>> {
    let status = admin_json(admin, "/status").await?;
    let backends = status["upstreams"][0]["backends"].as_array()?;
    Some(
        backends
            .iter()
            .filter(|b| b["address"].as_str().is_some_and(|a| a.starts_with(prefix)))
            .map(|b| b["routable"].as_bool().unwrap_or(false))
            .collect(),
    )
}

/// Polls `cond` every 20 ms until it holds (returns the time it took) or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ------------------------------------------------------------------ processes

/// A child process killed (by its id) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards a child's stdout lines to a channel from a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// The text after the marker in a child's line, if it is one of ours.
fn marked(line: &str) -> Option<&str> {
    line.split_once(MARK).map(|(_, rest)| rest)
}

/// Runs `cmd args…`; Ok(stdout) or Err(stderr / spawn error).
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(cmd).args(args).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("`{cmd}` cannot run: {e}")),
    }
}

/// `run`, panicking on failure: for steps that must work once the namespaces exist.
fn must(cmd: &str, args: &[&str]) -> String {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The network namespaces of one run: everything in them is killed and they are
/// deleted on drop, which also removes the veth pair, routes and nft tables in them.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// Kills what runs in our namespaces (processes this test started there) and
    /// deletes them.
    fn remove(names: &[String]) {
        for ns in names {
            if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-9", pid]);
                }
            }
            let _ = run("ip", &["netns", "del", ns]);
        }
    }

    /// Removes namespaces left by earlier runs of this test that were killed before
    /// their guard ran (named `levee-lv-PID` / `levee-za-PID`, PID no longer running).
    fn sweep_stale() {
        let Ok(list) = run("ip", &["netns", "list"]) else {
            return;
        };
        let stale: Vec<String> = list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| {
                let pid = name
                    .strip_prefix("levee-lv-")
                    .or_else(|| name.strip_prefix("levee-za-"));
                pid.is_some_and(|p| {
                    p.parse::<u32>().is_ok()
                        && !std::path::Path::new(&format!("/proc/{p}")).exists()
                })
            })
            .map(str::to_owned)
            .collect();
        if !stale.is_empty() {
            println!("removing stale namespaces of killed runs: {stale:?}");
            Netns::remove(&stale);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove(&self.names);
    }
}

/// Where the two namespaces are and how they are joined.
#[derive(Clone, Debug)]
struct Topology {
    lv: String,
    za: String,
    veth_lv: String,
    veth_za: String,
    ip_lv: IpAddr,
    ip_za: IpAddr,
    nft: bool,
}

impl Topology {
    fn encode(&self) -> String {
        format!(
            "{},{},{},{},{},{},{}",
            self.lv, self.za, self.veth_lv, self.veth_za, self.ip_lv, self.ip_za, self.nft
        )
    }

    fn decode(s: &str) -> Topology {
        let p: Vec<&str> = s.split(',').collect();
        Topology {
            lv: p[0].into(),
            za: p[1].into(),
            veth_lv: p[2].into(),
            veth_za: p[3].into(),
            ip_lv: p[4].parse().expect("ip"),
            ip_za: p[5].parse().expect("ip"),
            nft: p[6] == "true",
        }
    }
}

/// Why partitions cannot be tested here, if they cannot.
fn partition_precondition() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Err(format!("not root (uid {})", uid.unwrap_or_default()));
    }
    run("ip", &["-V"])
        .map(|_| ())
        .map_err(|e| format!("no iproute2: {e}"))
}

/// Builds the two namespaces and the veth pair; the guard owns them from the first
/// `netns add`.
fn build_topology(guard: &mut Netns) -> Result<Topology, String> {
    let pid = std::process::id();
    let third = pid % 250;
    let t = Topology {
        lv: format!("levee-lv-{pid}"),
        za: format!("levee-za-{pid}"),
        veth_lv: format!("lvl{pid}"),
        veth_za: format!("lvz{pid}"),
        ip_lv: format!("10.213.{third}.1").parse().expect("ip"),
        ip_za: format!("10.213.{third}.2").parse().expect("ip"),
        nft: false,
    };
    for ns in [&t.lv, &t.za] {
        run("ip", &["netns", "add", ns])?;
        guard.names.push(ns.clone());
    }
    // Both ends are created directly inside the namespaces: nothing touches the host's.
    run(
        "ip",
        &[
            "link", "add", &t.veth_lv, "netns", &t.lv, "type", "veth", "peer", "name", &t.veth_za,
            "netns", &t.za,
        ],
    )?;
    for (ns, dev, ip) in [(&t.lv, &t.veth_lv, t.ip_lv), (&t.za, &t.veth_za, t.ip_za)] {
        run(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev],
        )?;
        run("ip", &["-n", ns, "link", "set", dev, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    }
    let nft = run("nft", &["--version"]).is_ok()
        && run("ip", &["netns", "exec", &t.za, "nft", "list", "tables"]).is_ok();
    Ok(Topology { nft, ..t })
}

/// Re-executes this test binary as `role` inside namespace `ns`.
fn spawn_role(ns: &str, role: &str, envs: &[(&str, String)]) -> Reaped {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "--exact",
            "partition_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Reaped(cmd.spawn().expect("spawn ip netns exec"))
}

#[test]
fn partition_zone_a_and_fail_over_to_zone_b() {
    if std::env::var(ROLE_ENV).is_ok() {
        return; // a re-executed child runs `partition_role` only
    }
    let started = Instant::now();
    if let Err(why) = partition_precondition() {
        println!("skipped: {why}");
        return;
    }
    Netns::sweep_stale();
    let mut guard = Netns { names: Vec::new() };
    let topo = match build_topology(&mut guard) {
        Ok(t) => t,
        Err(why) => {
            println!("skipped: cannot build network namespaces: {why}");
            return;
        }
    };
    println!(
        "topology: {} ({}) <-> {} ({}), nft {}",
        topo.lv,
        topo.ip_lv,
        topo.za,
        topo.ip_za,
        if topo.nft {
            "available"
        } else {
            "missing: reject uses a prohibit route"
        }
    );

    // Zone a's replicas, in their namespace.
    let mut zone_a = spawn_role(
        &topo.za,
        "replicas",
        &[
            (BIND_ENV, topo.ip_za.to_string()),
            (NAMES_ENV, "a1,a2".to_owned()),
        ],
    );
    let rx = lines_of(&mut zone_a.0);
    let mut replicas = Vec::new();
    while replicas.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("zone a replicas start");
        if let Some(rest) = marked(&line).and_then(|m| m.strip_prefix("replica ")) {
            replicas.push(rest.replace(' ', "="));
        }
    }

    // The scenario (levee, zone b, load), in levee's namespace.
    let mut scenario = spawn_role(
        &topo.lv,
        "scenario",
        &[
            (ZONE_A_ENV, replicas.join(",")),
            (TOPOLOGY_ENV, topo.encode()),
        ],
    );
    let rx = lines_of(&mut scenario.0);
    let mut passed = false;
    let mut failures = Vec::new();
    loop {
        let left = PARTITION_LIMIT.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => match marked(&line) {
                Some("passed") => passed = true,
                Some(m) if m.starts_with("FAILED") => failures.push(m.to_owned()),
                Some(m) => println!("{m}"),
                None if line.contains("panicked") => failures.push(line),
                None => {}
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                failures.push(format!("scenario still running after {PARTITION_LIMIT:?}"));
                break;
            }
        }
    }
    let status = scenario.0.wait().ok();
    drop(scenario);
    drop(zone_a);
    drop(guard);
    println!(
        "partition test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty() && passed,
        "partition scenario failed (exit {status:?}):\n{}",
        failures.join("\n")
    );
}

/// Entry of the re-executed test binary; does nothing in a normal run.
#[test]
fn partition_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match role.as_str() {
        "replicas" => rt.block_on(replicas_role()),
        "scenario" => {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(scenario_role())
            }));
            match outcome {
                Ok(()) => say("passed"),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    say(&format!("FAILED {}", msg.replace('\n', " | ")));
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// A line for the parent.
fn say(msg: &str) {
    println!("\n{MARK}{msg}");
}

/// Serves replicas on `BIND_ENV` until stdin closes (the parent is gone) or 2 minutes.
async fn replicas_role() {
    let ip: IpAddr = std::env::var(BIND_ENV).expect("bind").parse().expect("ip");
    let names = std::env::var(NAMES_ENV).expect("names");
    let mut running = Vec::new();
    for name in names.split(',') {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind replica");
        let r = Replica::start_on(
            ReplicaConfig {
                name: name.into(),
                zone: name[..1].into(),
                workers: 16,
                service_time: Duration::from_millis(2),
            },
            listener,
        )
        .await
        .expect("replica");
        say(&format!("replica {name} {}", r.addr()));
        running.push(r);
    }
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    });
    let _ = tokio::time::timeout(Duration::from_secs(120), stdin_closed).await;
}

/// One way of cutting zone a off, and how to heal it.
struct Variant {
    name: &'static str,
    cut: Vec<Vec<String>>,
    heal: Vec<Vec<String>>,
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

fn variants(t: &Topology, ports: &[u16]) -> Vec<Variant> {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let za_host = format!("{}/32", t.ip_za);
    let mut out = vec![
        Variant {
            name: "blackhole (zone a's link down, packets vanish)",
            cut: vec![cmd(&["ip", "-n", &t.za, "link", "set", &t.veth_za, "down"])],
            heal: vec![cmd(&["ip", "-n", &t.za, "link", "set", &t.veth_za, "up"])],
        },
        Variant {
            name: "local link down (no route: ENETUNREACH)",
            cut: vec![cmd(&["ip", "-n", &t.lv, "link", "set", &t.veth_lv, "down"])],
            heal: vec![cmd(&["ip", "-n", &t.lv, "link", "set", &t.veth_lv, "up"])],
        },
    ];
    let nft = |rule: &str| -> Vec<Vec<String>> {
        vec![
            cmd(&[
                "ip",
                "netns",
                "exec",
                &t.za,
                "nft",
                "add",
                "table",
                "inet",
                "levee_test",
            ]),
            cmd(&[
                "ip",
                "netns",
                "exec",
                &t.za,
                "nft",
                "add",
                "chain",
                "inet",
                "levee_test",
                "input",
                "{ type filter hook input priority 0 ; }",
            ]),
            cmd(&[
                "ip",
                "netns",
                "exec",
                &t.za,
                "nft",
                "add",
                "rule",
                "inet",
                "levee_test",
                "input",
                &format!("tcp dport {{ {ports} }} {rule}"),
            ]),
        ]
    };
    let nft_heal = vec![cmd(&[
        "ip",
        "netns",
        "exec",
        &t.za,
        "nft",
        "delete",
        "table",
        "inet",
        "levee_test",
    ])];
    if t.nft {
        out.push(Variant {
            name: "reject (nft: tcp reset)",
            cut: nft("reject with tcp reset"),
            heal: nft_heal.clone(),
        });
        out.push(Variant {
            name: "nft drop (segments dropped silently)",
            cut: nft("drop"),
            heal: nft_heal,
        });
    } else {
        out.push(Variant {
            name: "reject (prohibit route: EACCES at once)",
            cut: vec![cmd(&[
                "ip", "-n", &t.lv, "route", "add", "prohibit", &za_host,
            ])],
            heal: vec![cmd(&[
                "ip", "-n", &t.lv, "route", "del", "prohibit", &za_host,
            ])],
        });
    }
    out
}

fn exec_all(cmds: &[Vec<String>]) {
    for c in cmds {
        let args: Vec<&str> = c[1..].iter().map(String::as_str).collect();
        must(&c[0], &args);
    }
}

/// Figures of one variant.
struct Figures {
    detect: Option<Duration>,
    failed: usize,
    hung: usize,
    total: usize,
    errors_stop: Duration,
    slowest: Duration,
    back: Option<Duration>,
    on_b: f64,
}

async fn scenario_role() {
    let topo = Topology::decode(&std::env::var(TOPOLOGY_ENV).expect("topology"));
    let zone_a: Vec<(String, SocketAddr)> = std::env::var(ZONE_A_ENV)
        .expect("zone a")
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("name=addr");
            (k.to_owned(), v.parse().expect("addr"))
        })
        .collect();
    let b1 = replica("b1", "b", 16, 2).await;
    let b2 = replica("b2", "b", 16, 2).await;
    let mut backends = String::new();
    for (addr, zone) in [
        (zone_a[0].1, "a"),
        (zone_a[1].1, "a"),
        (b1.addr(), "b"),
        (b2.addr(), "b"),
    ] {
        backends.push_str(&format!(
            "[[upstream.backend]]\naddress = \"{addr}\"\nzone = \"{zone}\"\n"
        ));
    }
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\nzone = \"a\"\n\
         [server.timeouts]\nconnect_ms = {CONNECT_MS}\nread_ms = {READ_MS}\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\nretry_on_connect_failure = 2\nretry_budget = 0.5\n\
         [upstream.limits]\nmax_inflight = 16\nqueue_depth = 64\nqueue_timeout_ms = 500\n\
         [upstream.health]\npath = \"/health\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = 2\nfall = 2\n\
         eject_after_failures = 3\neject_ms = 500\neject_max_ms = 2000\nslow_start_ms = 0\n{backends}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, &config).expect("write config");
    let mut levee = LeveeProcess::spawn(&path, &[]);
    let admin = levee.admin;
    let za_prefix = topo.ip_za.to_string();
    let all_routable = |want: bool| {
        let prefix = za_prefix.clone();
        move || {
            let prefix = prefix.clone();
            async move {
                routable(admin, &prefix)
                    .await
                    .is_some_and(|r| r.len() == 2 && r.iter().all(|&x| x == want))
            }
        }
    };
    let up = wait_until(Duration::from_secs(10), all_routable(true)).await;
    assert!(
        up.is_some(),
        "zone a never became routable through the veth"
    );

    let t0 = Instant::now();
    let load = Load::start(levee.proxy, 6, 2, t0);
    let ports: Vec<u16> = zone_a.iter().map(|(_, a)| a.port()).collect();
    let mut results = Vec::new();
    for v in variants(&topo, &ports) {
        // Steady state on zone a (the local zone) first.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let steady = load.samples_since(load.now().saturating_sub(Duration::from_millis(500)));
        let on_a = steady.iter().filter(|s| s.zone == b'a').count();
        assert!(
            on_a * 10 >= steady.len() * 8,
            "{}: before the cut, zone a served only {on_a}/{}",
            v.name,
            steady.len()
        );

        let cut_at = load.now();
        exec_all(&v.cut);
        let detect = wait_until(Duration::from_secs(8), all_routable(false)).await;
        // Let the failover settle, then measure a clean stretch on zone b.
        tokio::time::sleep(Duration::from_millis(READ_MS + 700)).await;
        let heal_at = load.now();
        exec_all(&v.heal);
        let load_ref = &load;
        let back = wait_until(Duration::from_secs(8), || async move {
            load_ref
                .samples_since(heal_at)
                .iter()
                .any(|s| s.zone == b'a' && s.ok())
        })
        .await;
        let during: Vec<Sample> = load
            .samples_since(cut_at)
            .into_iter()
            .filter(|s| s.sent < heal_at)
            .collect();
        let failed: Vec<&Sample> = during.iter().filter(|s| !s.ok()).collect();
        let errors_stop = failed
            .iter()
            .map(|s| s.done.saturating_sub(cut_at))
            .max()
            .unwrap_or_default();
        let slowest = during
            .iter()
            .map(|s| s.done - s.sent)
            .max()
            .unwrap_or_default();
        let settled_from =
            cut_at + detect.unwrap_or_default() + Duration::from_millis(READ_MS + 400);
        let settled: Vec<&Sample> = during.iter().filter(|s| s.sent >= settled_from).collect();
        let on_b = settled.iter().filter(|s| s.zone == b'b' && s.ok()).count() as f64
            / settled.len().max(1) as f64;
        let f = Figures {
            detect,
            failed: failed.len(),
            hung: during.iter().filter(|s| s.hung).count(),
            total: during.len(),
            errors_stop,
            slowest,
            back,
            on_b,
        };
        let gets: Vec<Sample> = during.iter().filter(|s| !s.post).copied().collect();
        let posts: Vec<Sample> = during.iter().filter(|s| s.post).copied().collect();
        say(&format!(
            "partition {}: detected in {}; GET {}; POST {}; errors stopped {} ms after the cut, slowest answer {} ms, {:.0}% on zone b once settled; zone a serving again {} after healing",
            v.name,
            f.detect.map_or("never".into(), |d| format!("{} ms", ms(d))),
            describe(&gets),
            describe(&posts),
            ms(f.errors_stop),
            ms(f.slowest),
            f.on_b * 100.0,
            f.back.map_or("never".into(), |d| format!("{} ms", ms(d))),
        ));
        for e in load.take_errors() {
            say(&format!("  transport error: {e}"));
        }
        results.push((v.name, f));
        // Both zone-a backends routable again before the next variant.
        let _ = wait_until(Duration::from_secs(8), all_routable(true)).await;
    }
    let samples = load.stop().await;
    let alive = levee.alive();
    let final_status = admin_json(admin, "/status").await;
    let idle = final_status.as_ref().is_some_and(|s| {
        s["upstreams"][0]["inflight"].as_u64() == Some(0)
            && s["upstreams"][0]["queue"].as_u64() == Some(0)
    });
    let failed: usize = results.iter().map(|(_, f)| f.failed).sum();
    say(&format!(
        "partition load: {} requests in all, {failed} failed during the cuts, levee alive {alive}, in flight and queue back to 0: {idle}",
        samples.len()
    ));

    assert!(alive, "levee exited during the partitions");
    assert!(!levee.panicked(), "levee logged a panic");
    assert!(idle, "levee not idle after the load: {final_status:?}");
    // Detection: probes every 200 ms, fall 2, 150 ms probe timeout (plus a connect
    // timeout for silent drops); generous bounds for a loaded 2-core machine.
    let detect_bound = Duration::from_millis(INTERVAL_MS * 3 + CONNECT_MS + 1200);
    for (name, f) in &results {
        let detect = f
            .detect
            .unwrap_or_else(|| panic!("{name}: zone a never marked down"));
        assert!(detect <= detect_bound, "{name}: detected after {detect:?}");
        assert_eq!(
            f.hung, 0,
            "{name}: {} requests hung past {CLIENT_TIMEOUT:?}",
            f.hung
        );
        assert!(
            f.errors_stop <= detect + Duration::from_millis(READ_MS + 400),
            "{name}: errors went on {:?} after the cut",
            f.errors_stop
        );
        assert!(
            f.on_b >= 0.99,
            "{name}: only {:.1}% served by zone b once settled",
            f.on_b * 100.0
        );
        assert!(
            f.back.is_some_and(|d| d < Duration::from_secs(5)),
            "{name}: zone a not serving 5 s after healing"
        );
        assert!(f.total > 100, "{name}: too little load ({})", f.total);
    }
    drop(levee);
}

// ------------------------------------------------------------------ delay and loss

/// A user-space TCP proxy: forwards each chunk after `delay_ms`, and kills a
/// connection when a client chunk arrives, with probability `loss_permille` / 1000.
struct Impairment {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    loss_permille: Arc<AtomicU32>,
    killed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Impairment {
    async fn start(target: SocketAddr) -> Impairment {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let delay_ms = Arc::new(AtomicU64::new(0));
        let loss_permille = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(AtomicU64::new(0));
        let (d, l, k) = (delay_ms.clone(), loss_permille.clone(), killed.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let (d, l, k) = (d.clone(), l.clone(), k.clone());
                        conns.spawn(async move {
                            let Ok(server) = TcpStream::connect(target).await else { return };
                            let _ = (client.set_nodelay(true), server.set_nodelay(true));
                            let (cr, cw) = client.into_split();
                            let (sr, sw) = server.into_split();
                            let up = pipe(cr, sw, d.clone(), Some((l, k)));
                            let down = pipe(sr, cw, d, None);
                            tokio::pin!(up, down);
                            // A killed connection ends at once; an end of stream is passed on
                            // (half-close) and the other direction gets a moment to finish.
                            let linger = Duration::from_secs(5);
                            tokio::select! {
                                killed = &mut up => if !killed {
                                    let _ = tokio::time::timeout(linger, down).await;
                                },
                                _ = &mut down => {
                                    let _ = tokio::time::timeout(linger, up).await;
                                }
                            }
                        });
                    }
                }
            }
        });
        Impairment {
            addr,
            delay_ms,
            loss_permille,
            killed,
            task,
        }
    }

    fn set(&self, delay_ms: u64, loss_permille: u32) {
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.loss_permille.store(loss_permille, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived (a reader and a
/// writer joined by a channel, so the delay does not cut the throughput), then
/// half-closes `to`. With `loss`, a chunk may kill the connection instead: returns true
/// then, without writing what is still queued.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
    loss: Option<(Arc<AtomicU32>, Arc<AtomicU64>)>,
) -> bool {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false, // drops `tx`: the writer drains and ends
                Ok(n) => n,
            };
            if let Some((permille, killed)) = &loss {
                let p = permille.load(Ordering::SeqCst);
                if p > 0 && rand::rng().random_range(0..1000) < p {
                    killed.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
            }
            let due =
                tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return false;
            }
        }
    };
    tokio::pin!(writer, reader);
    tokio::select! {
        killed = &mut reader => {
            if !killed {
                writer.await;
            }
            killed
        }
        () = &mut writer => false,
    }
}

/// Counts by outcome of a slice of samples: (2xx, 502, 504, other, transport, hung).
fn outcomes(samples: &[Sample]) -> (usize, usize, usize, usize, usize, usize) {
    let mut o = (0, 0, 0, 0, 0, 0);
    for s in samples {
        match s.status {
            200..=299 => o.0 += 1,
            502 => o.1 += 1,
            504 => o.2 += 1,
            0 if s.hung => o.5 += 1,
            0 => o.4 += 1,
            _ => o.3 += 1,
        }
    }
    o
}

/// `N: 2xx a, 502 b, …` with only the non-zero outcomes.
fn describe(samples: &[Sample]) -> String {
    let (ok, e502, e504, other, transport, hung) = outcomes(samples);
    let mut parts = vec![format!("{} sent: 2xx {ok}", samples.len())];
    for (n, what) in [
        (e502, "502"),
        (e504, "504"),
        (other, "other status"),
        (transport, "transport error"),
        (hung, "hung"),
    ] {
        if n > 0 {
            parts.push(format!("{what} {n}"));
        }
    }
    parts.join(", ")
}

fn share_of(samples: &[Sample], zone: u8) -> f64 {
    samples.iter().filter(|s| s.zone == zone && s.ok()).count() as f64
        / samples.iter().filter(|s| s.ok()).count().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_through_a_user_space_proxy() {
    if std::env::var(ROLE_ENV).is_ok() {
        return;
    }
    // "a1" sits behind the impairing proxy, "b1" is direct (zone letters only tell them apart).
    let slow = replica("a1", "a", 16, 2).await;
    let fast = replica("b1", "b", 16, 2).await;
    let proxy = Impairment::start(slow.addr()).await;
    let mut setup = Setup::new(&[]);
    setup.backends = vec![(proxy.addr, "x".into()), (fast.addr(), "x".into())];
    let levee = setup
        .server("[server.timeouts]\nconnect_ms = 300\nread_ms = 300")
        .upstream(
            "retry_on_connect_failure = 1\nretry_budget = 0.2\n\
             [upstream.limits]\nmax_inflight = 8\nqueue_depth = 64\nqueue_timeout_ms = 500\n\
             [upstream.health]\npath = \"/health\"\ninterval_ms = 200\ntimeout_ms = 150\nrise = 2\nfall = 2\n\
             eject_after_failures = 5\neject_ms = 1000\nslow_start_ms = 0",
        )
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    let t0 = Instant::now();
    let load = Load::start(levee.addr(), 8, 3, t0);
    let phase = |name: &str, samples: &[Sample]| {
        let gets: Vec<Sample> = samples.iter().filter(|s| !s.post).copied().collect();
        let posts: Vec<Sample> = samples.iter().filter(|s| s.post).copied().collect();
        let mut lat: Vec<Duration> = samples
            .iter()
            .filter(|s| s.ok() && s.zone == b'a')
            .map(|s| s.done - s.sent)
            .collect();
        lat.sort();
        let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
        println!(
            "impairment {name}: GET {}, POST {}; {:.0}% of 2xx via the impaired backend (its p50 {} ms)",
            describe(&gets),
            describe(&posts),
            share_of(samples, b'a') * 100.0,
            ms(p50)
        );
    };

    // 1. No impairment: both backends serve.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let base = load.samples_since(Duration::ZERO);
    phase("none", &base);
    assert_eq!(outcomes(&base).0, base.len(), "errors without impairment");
    let base_share = share_of(&base, b'a');

    // 2. 40 ms each way, well inside every timeout: slower, but no error, and less
    //    traffic (least in flight prefers the backend that frees its slots sooner).
    let from = load.now();
    proxy.set(40, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let delayed = load.samples_since(from);
    phase("delay 40 ms", &delayed);
    assert_eq!(
        outcomes(&delayed).0,
        delayed.len(),
        "errors under a small delay"
    );
    assert!(
        share_of(&delayed, b'a') < base_share,
        "the delayed backend did not lose traffic"
    );

    // 3. 600 ms each way, past the 300 ms read timeout and the 150 ms probe timeout:
    //    504s until levee stops using it.
    let from = load.now();
    proxy.set(600, 0);
    let out = wait_until(Duration::from_secs(5), || {
        let b = up.backends[0].clone();
        async move { !b.is_healthy() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let slow_phase = load.samples_since(from);
    phase("delay 600 ms", &slow_phase);
    let out = out.expect("the slow backend was never taken out");
    println!(
        "impairment delay 600 ms: backend out after {} ms ({})",
        ms(out),
        if up.backends[0].health.is_ejected() {
            "ejected by failed requests"
        } else {
            "marked down by probes"
        }
    );
    let settled: Vec<Sample> = slow_phase
        .iter()
        .filter(|s| s.sent >= from + out + Duration::from_millis(400))
        .copied()
        .collect();
    assert!(
        out < Duration::from_millis(2000),
        "took {out:?} to stop using it"
    );
    assert_eq!(
        outcomes(&settled).0,
        settled.len(),
        "errors after the slow backend was out"
    );
    let (_, _, _, other, transport, hung) = outcomes(&slow_phase);
    assert_eq!((other, transport, hung), (0, 0, 0), "only clean 504s");

    // 4. Healed: back in service.
    proxy.set(0, 0);
    let back = wait_until(Duration::from_secs(8), || {
        let b = up.backends[0].clone();
        async move { b.is_healthy() }
    })
    .await;
    println!(
        "impairment delay removed: backend routable again after {}",
        back.map_or("never".into(), |d| format!("{} ms", ms(d)))
    );
    // A clean stretch, so its successes end the backend's failure streak.
    let from = load.now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    phase("delay removed", &load.samples_since(from));
    for e in load.take_errors() {
        println!("  transport error: {e}");
    }

    // 5. No delay, 20% of client chunks (about one request in five) kill their
    //    connection: idempotent requests are retried, others get a clean 502; never a
    //    hang. Consecutive failures may eject the backend.
    let from = load.now();
    proxy.set(0, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let lossy = load.samples_since(from);
    phase("loss 20%", &lossy);
    println!(
        "impairment loss 20%: {} connections killed, backend now {} ({} ejections so far)",
        proxy.killed.load(Ordering::SeqCst),
        up.backends[0].health.state().as_str(),
        up.backends[0].health.ejections()
    );
    let loss_errors = load.take_errors();
    for e in &loss_errors {
        println!("  transport error: {e}");
    }
    let (_, _, _, other, _, hung) = outcomes(&lossy);
    assert_eq!((other, hung), (0, 0), "only clean 502/504 under loss");

    // 6. Healed again: the backend comes back and serves without errors.
    proxy.set(0, 0);
    let healed = wait_until(Duration::from_secs(10), || {
        let b = up.backends[0].clone();
        async move { b.is_healthy() }
    })
    .await;
    let from = load.now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = load.samples_since(from);
    phase("healed", &after);
    println!(
        "impairment healed: backend routable after {}",
        healed.map_or("never".into(), |d| format!("{} ms", ms(d)))
    );
    let all = load.stop().await;
    assert!(healed.is_some(), "the backend never came back");
    assert_eq!(outcomes(&after).0, after.len(), "errors after healing");
    assert!(all.len() > 300, "too little load: {}", all.len());
    eventually(Duration::from_secs(10), "idle", || all_idle(&levee)).await;
}
