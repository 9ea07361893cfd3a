//! DNS discovery through real sockets: a nameserver on loopback whose answers change
//! while load runs, replicas on several loopback addresses behind one name.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use levee::demo::replica::{Replica, ReplicaConfig};

const LIMIT: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_millis(200);
const NAME: &str = "app.levee.test.";

/// How the nameserver behaves.
const ANSWER: u8 = 0;
const SILENT: u8 = 1;
const SERVFAIL: u8 = 2;

/// A nameserver on `127.0.0.1` answering A queries for [`NAME`] with the addresses set
/// now (AAAA: no records; any other name: NXDOMAIN), or not at all, or SERVFAIL.
struct Nameserver {
    addr: SocketAddr,
    answers: Arc<parking_lot::Mutex<Vec<Ipv4Addr>>>,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Nameserver {
    async fn start(answers: &[Ipv4Addr]) -> Nameserver {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let list = Arc::new(parking_lot::Mutex::new(answers.to_vec()));
        let mode = Arc::new(AtomicU8::new(ANSWER));
        let (l, m) = (list.clone(), mode.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mode = m.load(Ordering::SeqCst);
                if mode == SILENT {
                    continue;
                }
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_authoritative(true)
                    .set_recursion_available(true);
                for q in query.queries() {
                    reply.add_query(q.clone());
                    if mode == SERVFAIL {
                        reply.set_response_code(ResponseCode::ServFail);
                    } else if q.name().to_ascii().to_ascii_lowercase() != NAME {
                        reply.set_response_code(ResponseCode::NXDomain);
                    } else if q.query_type() == RecordType::A {
                        for ip in l.lock().iter() {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                1,
                                RData::A(rdata::A(*ip)),
                            ));
                        }
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Nameserver {
            addr,
            answers: list,
            mode,
            task,
        }
    }

    fn set(&self, answers: &[Ipv4Addr]) {
        *self.answers.lock() = answers.to_vec();
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replicas on `127.0.0.{2,3,...}`, all on one port (a name gives one port).
async fn replicas(n: u8) -> (Vec<Replica>, u16) {
    'port: loop {
        let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..n {
            match tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2 + i), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'port,
            }
        }
        let mut out = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let cfg = ReplicaConfig {
                name: format!("r{}", i + 1),
                zone: "a".into(),
                workers: 8,
                service_time: Duration::from_millis(1),
            };
            out.push(Replica::start_on(cfg, l).await.expect("replica"));
        }
        return (out, port);
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn config(ns: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n\
         [server.dns]\nnameservers = [\"{ns}\"]\nrefresh_ms = {}\ntimeout_ms = 100\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n{extra}\n\
         [upstream.health]\nslow_start_ms = 1\n\
         [[upstream.backend]]\naddress = \"{}:{port}\"\nzone = \"a\"\n",
        REFRESH.as_millis(),
        NAME.trim_end_matches('.')
    )
}

async fn start(text: &str) -> levee::app::Running {
    let config = levee::config::parse(text)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
    levee::app::start(config).await.expect("levee starts")
}

/// A paced load: `clients` keep-alive connections, each sending `GET /work` every
/// `every`, until stopped or [`LIMIT`] x 3; counts answers other than 200.
struct Paced {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU32>,
    sent: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Paced {
    fn start(addr: SocketAddr, clients: usize, every: Duration) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU32::new(0));
        let sent = Arc::new(AtomicU32::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut c = Conn::open(addr).await;
                    let mut tick = tokio::time::interval(every);
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LIMIT * 3 {
                        tick.tick().await;
                        let status = c.get("/work").await.status;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if status != 200 {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Paced {
            stop,
            failed,
            sent,
            tasks,
        }
    }

    async fn stop(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_follow_the_name_under_load_and_survive_the_nameserver() {
    let (rs, port) = replicas(3).await;
    let ns = Nameserver::start(&[ip(2), ip(3)]).await;
    let levee = start(&config(ns.addr, port, "")).await;
    let backends = || -> Vec<SocketAddr> {
        levee.app.snapshot().upstreams[0]
            .backends
            .iter()
            .map(|b| b.address)
            .collect()
    };
    let at = |last: u8| SocketAddr::from((ip(last), port));
    assert_eq!(backends(), [at(2), at(3)], "resolved before serving");

    // About 200 requests a second through every change.
    let load = Paced::start(levee.addr(), 4, Duration::from_millis(20));
    eventually(LIMIT, "both replicas serve", || {
        rs[0].stats().served > 10 && rs[1].stats().served > 10
    })
    .await;

    // An address appears: it takes requests within two refresh periods.
    ns.set(&[ip(2), ip(3), ip(4)]);
    let changed = Instant::now();
    eventually(LIMIT, "the new address serves", || rs[2].stats().served > 0).await;
    let took = changed.elapsed();
    println!("added address served after {took:?} (refresh {REFRESH:?})");
    assert!(took <= REFRESH * 3, "{took:?}");

    // An address disappears: after two periods it takes none.
    ns.set(&[ip(3), ip(4)]);
    tokio::time::sleep(REFRESH * 2).await;
    eventually(LIMIT, "the removed address drained", || {
        rs[0].stats().inflight == 0 && !backends().contains(&at(2))
    })
    .await;
    let served = rs[0].stats().served;
    let kept = (rs[1].stats().served, rs[2].stats().served);
    tokio::time::sleep(REFRESH * 2).await;
    assert_eq!(rs[0].stats().served, served, "no request after removal");
    assert!(rs[1].stats().served > kept.0 && rs[2].stats().served > kept.1);

    // The nameserver stops answering, then fails: the last set keeps serving.
    ns.mode.store(SILENT, Ordering::SeqCst);
    tokio::time::sleep(REFRESH * 3).await;
    ns.mode.store(SERVFAIL, Ordering::SeqCst);
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(backends(), [at(3), at(4)]);
    let (sent, failed) = load.stop().await;
    println!("{sent} requests, {failed} failed");
    assert!(sent > 200, "{sent}");
    assert_eq!(failed, 0, "no request failed through the changes");

    let metrics =
        String::from_utf8_lossy(&fetch(levee.admin_addr.unwrap(), get("/metrics")).await.body)
            .into_owned();
    let lookups = samples(&metrics, "levee_dns_lookups_total");
    for result in ["ok", "timeout", "servfail"] {
        let key = format!("{{result=\"{result}\",upstream=\"app\"}}");
        assert!(
            lookups.get(&key).is_some_and(|n| *n > 0.0),
            "{result}: {lookups:?}"
        );
    }
    // The removed address's counters left /metrics with it; the kept ones' stayed.
    let requests = samples(&metrics, "levee_requests_total");
    assert!(
        !requests.keys().any(|k| k.contains(&at(2).to_string())),
        "{requests:?}"
    );
    assert!(
        requests.keys().any(|k| k.contains(&at(3).to_string())),
        "{requests:?}"
    );
    // /status shows the name and its addresses.
    let status = fetch(levee.admin_addr.unwrap(), get("/status"))
        .await
        .json();
    let names = &status["upstreams"][0]["names"];
    assert_eq!(
        names[0]["name"],
        format!("app.levee.test:{port}"),
        "{names}"
    );
    assert_eq!(
        names[0]["addresses"],
        serde_json::json!([at(3).to_string(), at(4).to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_at_start_serves_once_it_does() {
    let (rs, port) = replicas(1).await;
    let ns = Nameserver::start(&[]).await;
    let levee = start(&config(ns.addr, port, "")).await;
    assert!(levee.app.snapshot().upstreams[0].backends.is_empty());
    // No backend: levee answers itself, and nothing breaks.
    let reply = fetch(levee.addr(), get("/work")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    ns.set(&[ip(2)]);
    eventually(LIMIT, "the name resolves", || {
        !levee.app.snapshot().upstreams[0].backends.is_empty()
    })
    .await;
    assert_eq!(fetch(levee.addr(), get("/work")).await.status, 200);
    assert_eq!(rs[0].stats().served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levee_check_warns_about_a_name_that_does_not_resolve() {
    let ns = Nameserver::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, config(ns.addr, 8080, "")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("app.levee.test does not resolve now (no_records)"),
        "{text}"
    );
}
