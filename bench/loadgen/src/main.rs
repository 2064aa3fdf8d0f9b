//! A fleet simulated against a real control plane, for `bench/scale`: it enrolls `--nodes`
//! nodes through the API, then has each heartbeat every `--interval` seconds with its own
//! secret (keeping its connection from one beat to the next, as agents do, or with
//! `--fresh-connections` a new one each time), users dispatching at
//! `--dispatch-rate` a second, and `--subscribers` event streams (`?changes=true`, as
//! openboxd follows the registry) that must each see a change; then, with the heartbeats
//! going on, `--dispatchers` users dispatching as fast as answers come for
//! `--burst-seconds`. It prints what it measured as JSON.

use proto::routes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use net::control::{Client, Endpoint};
use proto::api::{
    AgentHost, DispatchRequest, EnrollRequest, EnrollToken, Enrolled, Grant, Heartbeat, NewEnrollToken, NewUser,
    NodeUpdate, Platform, Target, UserCreated,
};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// The control plane (or a balancer in front of several).
    #[arg(long)]
    server: String,
    /// An admin's login token.
    #[arg(long)]
    token: String,
    /// The control plane's TLS key, for an https:// server.
    #[arg(long)]
    fingerprint: Option<tls::Fingerprint>,
    /// A new connection (and over https a TLS handshake) for every heartbeat.
    #[arg(long)]
    fresh_connections: bool,
    /// Connections the nodes' heartbeats are kept open on [default: one per node, as
    /// agents keep them]; fewer when the open-file limit does not allow one per node, the
    /// nodes then taking turns on each.
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Seconds between one node's heartbeats.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Seconds measured, after every node has beaten once.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Dispatches a second during the measured window (all users together).
    #[arg(long, default_value_t = 20)]
    dispatch_rate: u32,
    /// Users dispatching as fast as answers come, after the window.
    #[arg(long, default_value_t = 4)]
    dispatchers: usize,
    #[arg(long, default_value_t = 10)]
    burst_seconds: u64,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Changes whose arrival at every subscriber is timed.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// The control plane's pid, for its memory.
    #[arg(long)]
    pid: Option<u32>,
}

/// Latencies in microseconds, and failures.
#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn add(&mut self, took: Duration, ok: Result<(), String>) {
        match ok {
            Ok(()) => self.micros.push(took.as_micros() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn summary(&mut self, seconds: f64) -> serde_json::Value {
        self.micros.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.micros.len() as f64 * p).ceil() as usize).clamp(1, self.micros.len().max(1)) - 1;
            self.micros.get(i).map_or(0.0, |m| *m as f64 / 1000.0)
        };
        serde_json::json!({
            "count": self.micros.len(),
            "per_sec": self.micros.len() as f64 / seconds,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": self.micros.last().map_or(0.0, |m| *m as f64 / 1000.0),
            "errors": self.errors,
            "first_error": self.first_error,
        })
    }
}

fn client(args: &Args, token: Option<&str>) -> Client {
    let endpoint = Endpoint { fingerprint: args.fingerprint, ..Endpoint::new(&args.server) };
    Client::new(&endpoint, token.map(trust::Secret::new)).expect("a client for the server")
}

/// Nodes whose connections come from one loopback address: one address has about 28,000
/// ports to connect from (and the dispatchers and streams need some).
const NODES_PER_SOURCE: usize = 16_000;

/// The loopback address connection number `n` comes from.
fn source(n: usize) -> std::net::IpAddr {
    let block = u8::try_from(n / NODES_PER_SOURCE).expect("fewer than 4 million connections");
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 1, block, 1))
}

/// The tags node `i` carries: every node `load`, a rack of a hundred, and the few the
/// subscribers watch `watched`.
fn tags(i: usize) -> Vec<String> {
    let mut tags = vec!["load".to_owned(), format!("rack{}", i % 100)];
    if i < 10 {
        tags.push("watched".to_owned());
    }
    tags
}

async fn enroll(args: &Arc<Args>) -> Vec<(Enrolled, usize)> {
    let admin = Arc::new(client(args, Some(&args.token)));
    let key = trust::generate_key().public_key().to_openssh().expect("a public key");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(Vec::with_capacity(args.nodes)));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (admin, key, next, out, args) = (admin.clone(), key.clone(), next.clone(), out.clone(), args.clone());
        let n = args.nodes;
        workers.push(tokio::spawn(async move {
            let anonymous = client(&args, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let mint = NewEnrollToken { tags: tags(i), ttl_secs: 3600 };
                let token: EnrollToken =
                    admin.call::<routes::NewEnrollToken>(&[], &mint).await.expect("an enrollment token");
                let req = EnrollRequest {
                    token: token.token,
                    name: Some(format!("n{i:05}")),
                    default_name: None,
                    addr: format!("127.0.0.1:{}", 20000 + i % 40000),
                    mesh_addr: None,
                    tags: Vec::new(),
                    platform: Platform { os: "linux".into(), arch: "x86_64".into() },
                    host_public_key: key.clone(),
                    capabilities: vec!["native".into()],
                    host: Some(simulated_host(i)),
                };
                let enrolled: Enrolled = anonymous.call::<routes::Enroll>(&[], &req).await.expect("enrolled");
                out.lock().await.push((enrolled, i));
            }
        }));
    }
    for w in workers {
        w.await.expect("an enrolling task");
    }
    std::mem::take(&mut *out.lock().await)
}

fn heartbeat_of(node: &Enrolled, i: usize) -> Heartbeat {
    Heartbeat {
        node_id: node.node_id.clone(),
        addr: format!("127.0.0.1:{}", 20000 + i % 40000),
        mesh_addr: None,
        platform: Platform { os: "linux".into(), arch: "x86_64".into() },
        version: proto::VERSION.into(),
        // As an agent reports it: the certificate enrollment gave (no renewal is asked for
        // in a run of minutes).
        host_cert_valid_before: trust::parse_certificate(&node.host_cert).map_or(0, |c| c.valid_before()),
        stopping: false,
        sessions: Vec::new(),
        capabilities: vec!["native".into()],
        host: Some(simulated_host(i)),
        executions: Vec::new(),
    }
}

/// A machine of its own for each simulated node (not the control plane's).
fn simulated_host(i: usize) -> AgentHost {
    AgentHost { machine: format!("simulated-{i}"), uid: 1000 }
}

fn rss(pid: Option<u32>) -> serde_json::Value {
    let Some(status) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok()) else {
        return serde_json::Value::Null;
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    serde_json::json!({ "rss_mib": kib("VmRSS:").map(|k| k / 1024), "peak_mib": kib("VmHWM:").map(|k| k / 1024) })
}

/// CPU time used so far, in seconds: by process `pid` (`/proc/PID/stat`'s utime and
/// stime), or with no pid by the whole machine (`/proc/stat`: all but idle and iowait).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    // Clock ticks: 100 a second on every Linux this runs on (USER_HZ).
    const TICKS: f64 = 100.0;
    let ticks: u64 = match pid {
        Some(p) => procinfo::cpu_ticks(p).unwrap_or_default(),
        None => {
            let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
            let cpu = stat.lines().next().unwrap_or_default().split_whitespace().skip(1);
            let fields: Vec<u64> = cpu.filter_map(|f| f.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            fields.iter().take(8).enumerate().filter(|(k, _)| *k != 3 && *k != 4).map(|(_, v)| v).sum()
        }
    };
    ticks as f64 / TICKS
}

/// Cores kept busy between two readings of [`cpu_seconds`]: the control plane, this load
/// generator, and the whole machine (the database, when it is PostgreSQL, is in the last).
struct CpuReading {
    control_plane: f64,
    load_generator: f64,
    machine: f64,
}

impl CpuReading {
    fn now(control_plane: Option<u32>) -> CpuReading {
        CpuReading {
            control_plane: cpu_seconds(control_plane),
            load_generator: cpu_seconds(Some(std::process::id())),
            machine: cpu_seconds(None),
        }
    }

    fn cores_since(&self, control_plane: Option<u32>, seconds: f64) -> serde_json::Value {
        let now = CpuReading::now(control_plane);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        serde_json::json!({
            "control_plane": (now.control_plane - self.control_plane) / seconds,
            "load_generator": (now.load_generator - self.load_generator) / seconds,
            "machine": (now.machine - self.machine) / seconds,
            "cores": cores,
        })
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let at_start = rss(args.pid);
    let started = Instant::now();
    let nodes = enroll(&args).await;
    let enroll_secs = started.elapsed().as_secs_f64();
    eprintln!("enrolled {} nodes in {enroll_secs:.1} s", nodes.len());

    // Heartbeats: each node at its own moment in the interval, for as long as the run lasts.
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(Mutex::new(Samples::default()));
    let beaten = Arc::new(tokio::sync::Semaphore::new(0));
    let interval = Duration::from_secs(args.interval);
    // Each connection with its turn: nodes that share one beat on it one after another (a
    // beat that found it busy would open another, past what the open-file limit allows).
    let connections: Vec<(Client, Arc<Mutex<()>>)> =
        (0..args.connections.unwrap_or(nodes.len()).clamp(1, nodes.len().max(1)))
            .map(|c| (client(&args, None).from_source(source(c)), Arc::default()))
            .collect();
    for (n, (node, i)) in nodes.iter().enumerate() {
        let ((connection, turn), from) = (connections[n % connections.len()].clone(), source(n % connections.len()));
        let (secret, hb) = (node.heartbeat_secret.clone(), heartbeat_of(node, *i));
        let (measuring, stop, beats, beaten, args) =
            (measuring.clone(), stop.clone(), beats.clone(), beaten.clone(), args.clone());
        let phase = interval.mul_f64(n as f64 / nodes.len() as f64);
        tokio::spawn(async move {
            let kept = connection.clone().with_token(trust::Secret::new(secret.clone()));
            let mut next = tokio::time::Instant::now() + phase;
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                next += interval;
                let fresh;
                let c = if args.fresh_connections {
                    fresh = client(&args, Some(&secret)).from_source(from);
                    &fresh
                } else {
                    &kept
                };
                // Timed from its turn: waiting for another node's beat is this bench's, not
                // the control plane's.
                let _turn = turn.lock().await;
                let t0 = Instant::now();
                let ok = c.call::<routes::Heartbeat>(&[], &hb).await.map(|_| ()).map_err(|e| e.to_string());
                if measuring.load(Ordering::Relaxed) {
                    beats.lock().await.add(t0.elapsed(), ok);
                } else if first {
                    first = false;
                    beaten.add_permits(1);
                }
            }
        });
    }
    // Every node beats once (and, over TLS, has made its connection) before anything is measured.
    let all = u32::try_from(nodes.len()).expect("fewer than 4 billion nodes");
    drop(beaten.acquire_many(all).await.expect("the count of first beats"));
    eprintln!("every node beat once after {:.1} s", started.elapsed().as_secs_f64() - enroll_secs);
    measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    let cpu_at_window = CpuReading::now(args.pid);

    // Users dispatching to a rack: at a steady rate in the window, then as fast as answers come.
    let steady = Arc::new(Mutex::new(Samples::default()));
    let burst = Arc::new(Mutex::new(Samples::default()));
    let bursting = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_secs_f64(args.dispatchers as f64 / f64::from(args.dispatch_rate.max(1)));
    for d in 0..args.dispatchers {
        let c = client(&args, Some(&args.token));
        let (stop, steady, burst, bursting) = (stop.clone(), steady.clone(), burst.clone(), bursting.clone());
        let public_key = trust::generate_key().public_key().to_openssh().expect("a public key");
        tokio::spawn(async move {
            let mut k = d;
            let mut tick = tokio::time::interval(pace);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                let flat_out = bursting.load(Ordering::Relaxed);
                if !flat_out {
                    tick.tick().await;
                }
                let req = DispatchRequest {
                    target: Target::Tag(format!("rack{}", k % 100)),
                    session: None,
                    isolation: proto::Isolation::Native,
                    public_key: public_key.clone(),
                };
                k += 1;
                let t0 = Instant::now();
                let ok = c.call::<routes::Dispatch>(&[], &req).await.map(|_| ()).map_err(|e| e.to_string());
                let samples = if flat_out { &burst } else { &steady };
                samples.lock().await.add(t0.elapsed(), ok);
            }
        });
    }

    // Subscribers: a user who may see the watched nodes, following the registry.
    let admin = client(&args, Some(&args.token));
    let watcher = format!("watcher{}", std::process::id());
    let created: UserCreated =
        admin.call::<routes::AddUser>(&[], &NewUser { name: watcher.clone() }).await.expect("a user");
    let grant = Grant { on: Target::Tag("watched".into()), isolation: Vec::new() };
    admin.call::<routes::Grant>(&[&watcher], &grant).await.expect("a grant");
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut opened = 0;
    for s in 0..args.subscribers {
        let c = client(&args, Some(&created.token));
        let Ok(mut stream) =
            c.events_of::<routes::Events>(&proto::api::EventsQuery { changes: true, since: None }).await
        else {
            continue;
        };
        opened += 1;
        let tx = arrivals_tx.clone();
        tokio::spawn(async move {
            let _keep = c;
            while let Some(Ok((name, data))) = stream.next().await {
                if name == proto::api::EVENT_NODE
                    && let Some(at) = data.find("mark-")
                {
                    let mark: String =
                        data[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                    let _ = tx.send((s, mark));
                }
            }
        });
    }
    // Each change: a tag added to a watched node; timed until every subscriber has it.
    let watched = nodes.iter().find(|(_, i)| *i == 0).map(|(n, _)| n.node_id.clone()).expect("node 0");
    let mut reach = Samples::default();
    for j in 0..args.changes {
        let mark = format!("mark-{j}");
        let t0 = Instant::now();
        let update = NodeUpdate { name: None, add_tags: vec![mark.clone()], remove_tags: Vec::new() };
        admin.call::<routes::UpdateNode>(&[&watched], &update).await.expect("a retag");
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < opened {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some((s, m))) if m == mark => {
                    seen.insert(s);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let ok =
            if seen.len() == opened { Ok(()) } else { Err(format!("{} of {opened} streams saw {mark}", seen.len())) };
        reach.add(t0.elapsed(), ok);
        let undo = NodeUpdate { name: None, add_tags: Vec::new(), remove_tags: vec![mark] };
        admin.call::<routes::UpdateNode>(&[&watched], &undo).await.expect("an untag");
    }

    let left = Duration::from_secs(args.seconds).saturating_sub(window.elapsed());
    tokio::time::sleep(left).await;
    let seconds = window.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    let cpu = cpu_at_window.cores_since(args.pid, seconds);
    let memory = rss(args.pid);
    let beats = beats.lock().await.summary(seconds);
    let steady = steady.lock().await.summary(seconds);
    // Then as many dispatches as the control plane answers, the heartbeats going on.
    bursting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.burst_seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let burst = burst.lock().await.summary(args.burst_seconds as f64);
    let peak = rss(args.pid);
    let out = serde_json::json!({
        "nodes": nodes.len(),
        "enroll_seconds": enroll_secs,
        "seconds": seconds,
        "heartbeats": beats,
        "dispatches": steady,
        "dispatch_burst": burst,
        "subscribers": opened,
        "change_to_all_subscribers": reach.summary(seconds),
        "cpu_in_window": cpu,
        "control_plane_memory_at_start": at_start,
        "control_plane_memory": memory,
        "control_plane_memory_after_burst": peak,
    });
    println!("{out}");
    std::process::exit(0);
}
