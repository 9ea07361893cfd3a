//! `levee demo`: embedded replicas in two zones, the proxy and its admin page in front
//! of them, and an open-loop load ramp through the proxy, so a newcomer sees levee keep
//! admitted latency flat while it sheds the excess.
//!
//! The replicas are in-process HTTP servers with finite capacity (a worker pool and a
//! service time; past capacity they queue without bound, like real servers). The config
//! is ordinary levee TOML, printed at start and parsed by the same code as `levee run`.

pub mod client;
pub mod load;
pub mod replica;

use std::net::SocketAddr;
use std::time::Duration;

use replica::{Replica, ReplicaConfig};

/// Replicas per zone.
const REPLICAS_PER_ZONE: usize = 2;
/// Workers per replica: its concurrency before it starts queueing.
const WORKERS: usize = 8;
/// Service time of a demo request.
const SERVICE_TIME: Duration = Duration::from_millis(20);
/// `target_p95_ms` of `levee demo --adaptive`: twice the service time.
const ADAPTIVE_TARGET_MS: u64 = 40;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listen address (status page, /metrics, /status).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Offer this many requests per second for `--duration` seconds instead of the
    /// default ramp (0.5x, 1x, 2x, 5x of capacity).
    #[arg(long)]
    pub load: Option<f64>,
    /// Seconds per load step.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Skip the load; just serve until Ctrl-C.
    #[arg(long)]
    pub no_load: bool,
    /// Exit after the load instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Write the demo's config to this file too.
    #[arg(long)]
    pub write_config: Option<std::path::PathBuf>,
    /// Give each replica a ceiling of twice its workers, as an operator who guessed
    /// too high would, and let `[upstream.adaptive]` find the limit (p95 target 40 ms):
    /// the status page shows each backend's limit in force beside its ceiling.
    #[arg(long)]
    pub adaptive: bool,
}

/// Requests per second the demo replicas can serve together.
pub fn capacity() -> f64 {
    let per_replica = WORKERS as f64 / SERVICE_TIME.as_secs_f64();
    per_replica * (2 * REPLICAS_PER_ZONE) as f64
}

/// The demo config for these replica addresses.
pub fn config_toml(
    listen: SocketAddr,
    admin: SocketAddr,
    replicas: &[(SocketAddr, &str)],
    adaptive: bool,
) -> String {
    // With adaptive limits levee sends to all four replicas alike: zone preference
    // would fill zone a's ceilings first, and a ceiling of twice the workers is a
    // queue inside each of its replicas until the limits have been found.
    let zone = if adaptive { "" } else { "zone = \"a\"" };
    let limits = if adaptive {
        format!(
            "max_inflight = {}    # per replica: twice its workers, a guess too high\n\
             queue_depth = 64\n\
             queue_timeout_ms = 50\n\n\
             [upstream.adaptive]\n\
             target_p95_ms = {ADAPTIVE_TARGET_MS}   # levee finds each replica's limit below the ceiling\n\
             min_inflight = 2",
            2 * WORKERS
        )
    } else {
        format!(
            "max_inflight = {WORKERS}     # per replica: its workers, so it never queues inside\n\
             queue_depth = 64\n\
             queue_timeout_ms = 50"
        )
    };
    let mut s = format!(
        r#"# levee demo config: {n} replicas in 2 zones, {WORKERS} workers x {ms} ms each
[server]
listen = ["{listen}"]
admin_listen = "{admin}"
threads = 2
{zone}

[[upstream]]
name = "demo"
routes = ["/"]
balance = "least_inflight"

[upstream.limits]
{limits}

[upstream.levels]
caution = {{ utilization = 0.9, queue = 8, p95_ms = 60 }}
danger = {{ queue = 32, queue_wait_ms = 40, p95_ms = 100 }}
cooldown_ms = 1000

[[priority]]
match = {{ path_prefix = "/admin/" }}
class = "critical"

[[priority]]
match = {{ header = "x-priority:low" }}
class = "low"
"#,
        n = replicas.len(),
        ms = SERVICE_TIME.as_millis(),
    );
    for (addr, zone) in replicas {
        s.push_str(&format!(
            "\n[[upstream.backend]]\naddress = \"{addr}\"\nzone = \"{zone}\"\n"
        ));
    }
    s
}

/// `limits in force: a1 9/16, a2 10/16, …`: each backend's limit and its ceiling.
fn limits_in_force(running: &crate::app::Running) -> String {
    let snapshot = running.app.snapshot();
    let each: Vec<String> = snapshot
        .upstreams
        .iter()
        .flat_map(|u| u.backends.iter())
        .map(|b| format!("{} {}/{}", b.label, b.limit(), b.max_inflight()))
        .collect();
    format!("limits in force (of the ceiling): {}", each.join(", "))
}

pub async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut replicas = Vec::new();
    for zone in ["a", "b"] {
        for i in 0..REPLICAS_PER_ZONE {
            let r = Replica::start(ReplicaConfig {
                name: format!("{zone}{}", i + 1),
                zone: zone.to_string(),
                workers: WORKERS,
                service_time: SERVICE_TIME,
            })
            .await?;
            replicas.push((r, zone));
        }
    }
    let addrs: Vec<(SocketAddr, &str)> = replicas.iter().map(|(r, z)| (r.addr(), *z)).collect();
    let text = config_toml(args.listen, args.admin, &addrs, args.adaptive);
    if let Some(path) = &args.write_config {
        std::fs::write(path, &text)?;
    }
    let config = crate::config::parse(&text)?;
    let running = crate::app::start(config).await?;
    let proxy = running.addr();
    let admin = running.admin_addr.unwrap_or(args.admin);
    let cap = capacity();
    println!("{text}");
    println!(
        "levee demo: {} replicas in zones a and b, capacity about {cap:.0} req/s",
        replicas.len()
    );
    println!("  proxy        http://{proxy}/hello");
    println!("  status page  http://{admin}/");
    println!("  metrics      http://{admin}/metrics");
    println!("  try          curl -i http://{proxy}/hello   and   curl -i -H 'x-priority: low' http://{proxy}/hello");
    println!();

    if !args.no_load {
        let offer = |rate: f64| {
            println!("--- offering {rate:.0} req/s for {} s", args.duration);
            load::run(
                load::LoadConfig {
                    target: proxy,
                    path: "/hello".into(),
                    rate,
                    duration: Duration::from_secs(args.duration),
                    connections: 2048,
                    timeout: Duration::from_secs(2),
                    headers: Vec::new(),
                },
                |tick| println!("{}", load::format_tick(tick)),
            )
        };
        match args.load {
            Some(rate) => println!("{}", load::format_report(&offer(rate).await)),
            None => {
                // Half the nominal capacity first: its median latency is the real service
                // time (timers and the proxy add a little), hence the real capacity.
                let warm = offer(0.5 * cap).await;
                println!("{}", load::format_report(&warm));
                let slots = (WORKERS * 2 * REPLICAS_PER_ZONE) as f64;
                let p50 = warm.ok_p50.as_secs_f64();
                let real = if p50 > 0.0 { slots / p50 } else { cap };
                println!(
                    "=== measured capacity: {slots:.0} slots / {:.1} ms = {real:.0} req/s",
                    p50 * 1000.0
                );
                for factor in [1.0, 2.0, 5.0] {
                    println!("=== {factor}x capacity");
                    println!("{}", load::format_report(&offer(factor * real).await));
                    if args.adaptive {
                        println!("{}", limits_in_force(&running));
                    }
                }
            }
        }
        println!();
        println!(
            "Past capacity, admitted requests keep their latency and the excess gets a fast 503 with Retry-After."
        );
    }
    if args.exit {
        running.shutdown(Duration::from_secs(1)).await;
        return Ok(());
    }
    println!("levee demo is serving; Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    running.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas() -> Vec<(SocketAddr, &'static str)> {
        vec![
            ("127.0.0.1:1001".parse().unwrap(), "a"),
            ("127.0.0.1:1002".parse().unwrap(), "b"),
        ]
    }

    #[test]
    fn both_demo_configs_are_valid_levee_configs() {
        let (listen, admin) = (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9901".parse().unwrap(),
        );
        let plain = crate::config::parse(&config_toml(listen, admin, &replicas(), false))
            .expect("the demo config parses");
        let up = &plain.upstreams[0];
        assert!(up.adaptive.is_none());
        assert_eq!(up.limits.max_inflight, WORKERS as u32);
        assert_eq!(plain.server.zone.as_deref(), Some("a"));

        let adaptive = crate::config::parse(&config_toml(listen, admin, &replicas(), true))
            .expect("the --adaptive demo config parses");
        let up = &adaptive.upstreams[0];
        let a = up.adaptive.as_ref().expect("[upstream.adaptive]");
        assert_eq!(a.target_p95.as_millis(), u128::from(ADAPTIVE_TARGET_MS));
        assert_eq!(up.limits.max_inflight, 2 * WORKERS as u32);
        assert_eq!(adaptive.server.zone, None, "no zone preference");
    }
}
