//! The real `levee` binary as a child process: started with `run -c FILE` (behind a
//! wrapper such as `prlimit` when given), its proxy and admin addresses read off its
//! JSON log, the log kept for the test to search, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

pub struct LeveeProcess {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for LeveeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LeveeProcess {
    /// Starts `levee run -c config`, behind `wrapper` (its argv prefix) when not empty.
    pub fn spawn(config: &std::path::Path, wrapper: &[String]) -> LeveeProcess {
        let levee = env!("CARGO_BIN_EXE_levee");
        let mut argv: Vec<String> = wrapper.to_vec();
        argv.extend(
            [levee, "--log-format", "json", "run", "-c"]
                .iter()
                .map(|s| (*s).to_owned()),
        );
        argv.push(config.display().to_string());
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("LEVEE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Reads the log to its end, so levee never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("panicked") {
                    eprintln!("levee: {line}");
                }
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let (mut proxy, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("levee logs its listeners; log: {:?}", log.lock().unwrap())
                });
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            match v["fields"]["message"].as_str() {
                Some("proxy listening") => proxy = addr,
                Some("admin listening") => admin = addr,
                _ => {}
            }
        }
        LeveeProcess {
            child,
            proxy: proxy.expect("proxy"),
            admin: admin.expect("admin"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn panicked(&self) -> bool {
        self.log_count("panicked") > 0
    }

    /// Open descriptors, from /proc.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field).unwrap_or(0)
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `GET path` on the admin listener, as JSON; `None` if it does not answer in 2 s.
pub async fn admin_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let resp = sender.send_request(super::get(path)).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice(&body).ok()
    })
    .await
    .ok()
    .flatten()
}
