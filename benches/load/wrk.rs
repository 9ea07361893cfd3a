//! Runs `wrk` (closed loop, keep-alive) and parses its summary: the most requests a
//! target answers per second with `connections` requests always outstanding.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What one `wrk --latency` run reported.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Responses whose status was not 2xx or 3xx.
    pub non2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// `wrk -t{threads} -c{connections} -d{seconds}s --latency URL`, killed if it runs
/// 15 s past its duration.
pub async fn run(
    wrk: &Path,
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> Result<WrkResult, String> {
    run_with(wrk, url, threads, connections, duration, &[]).await
}

/// [`run`] with request headers (`-H "name: value"`): `connection: close` makes every
/// request a new connection (and, on https, a new TLS handshake).
pub async fn run_with(
    wrk: &Path,
    url: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
    headers: &[&str],
) -> Result<WrkResult, String> {
    let secs = duration.as_secs().max(1);
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.args(headers.iter().flat_map(|h| ["-H", h]))
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(url);
    let text = run_tool("wrk", cmd, Duration::from_secs(secs + 15)).await?;
    parse(&text).ok_or_else(|| format!("cannot parse wrk output:\n{text}"))
}

/// Runs a load tool's command to its end (killed past `limit`) and returns what it
/// printed on stdout; a failed run is an error with both of its outputs.
pub async fn run_tool(
    name: &str,
    mut cmd: tokio::process::Command,
    limit: Duration,
) -> Result<String, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {name}: {e}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{name} ran past {limit:?}"))?
        .map_err(|e| format!("{name}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// Parses wrk's text summary.
pub fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = line.split_once(char::is_whitespace) {
                match pct {
                    "50%" => r.p50 = parse_latency(value.trim())?,
                    "99%" => r.p99 = parse_latency(value.trim())?,
                    "75%" | "90%" => {}
                    _ => in_distribution = false,
                }
                if in_distribution {
                    continue;
                }
            }
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            r.rps = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            r.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            // "123456 requests in 5.00s, 10.00MB read"
            let mut words = line.split_whitespace();
            r.requests = words.next()?.parse().ok()?;
            let secs = words.nth(2)?.trim_end_matches(',');
            r.seconds = parse_latency(secs)?.as_secs_f64();
        }
    }
    (r.rps > 0.0 || r.requests > 0).then_some(r)
}

/// `812.00us`, `1.23ms`, `2.01s`, `1.50m`.
fn parse_latency(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}
