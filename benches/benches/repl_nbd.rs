//! NBD write performance: qemu-nbd and nbdkit's file plugin serving a plain file (the two
//! anchors) versus rempart's replicated volume, same machine, same run, same client
//! (`qemu-img bench`), backing files on the same filesystem. Also resync throughput of a dirty
//! region versus a plain sequential write.
//!
//! Anchors are checked against physical references measured in every repetition (issue 14:
//! qemu-nbd 7.2 once served 1 MiB QD4 writes at 103 MiB/s where nbdkit did ~1.8 GiB/s, and the
//! bench printed "protocol C / qemu-nbd = 17.90 → MET"): raw `pwrite` + `fdatasync` on the
//! bench's file system (idle and with one CPU kept busy) and TCP on `main`'s loopback, through
//! `rempart_benches::physical`. Per workload the reference is: QD1 FUA latency — one loopback
//! RTT + one 4 KiB `pwrite` + `fdatasync`; QD32 — one request at a time (1 / (loopback RTT + one
//! 4 KiB `pwrite`)); 1 MiB QD4 — min(1 MiB `pwrite` stream + one `fdatasync`, loopback TCP
//! throughput). An anchor above 10× such a cost or below 25 % of such a rate is implausible: the
//! bench says why and takes its verdicts from the other anchor, or prints none.
//!
//! Run (root, for the network namespaces):
//! `cargo bench -p rempart-benches --bench repl_nbd` (env `REPL_BENCH_REPS`, default 5;
//! `REPL_BENCH_DROP_CACHES=0` keeps the page cache (dropped before each repetition by default);
//! `REPL_BENCH_CONFIGS=0,1` / `REPL_BENCH_WORKLOADS=2` pick rows and columns (0 qemu-nbd, 1-3
//! protocols C, B, A, 4 no peer, 5 nbdkit; `REPL_BENCH_CONFIGS=99` runs none of them), `REPL_BENCH_RESYNC=0` skips the resync part, `REPL_BENCH_RESYNC_MIB=128,512`
//! sets its dirty region sizes, `REPL_BENCH_DIR` places the images, default /var/tmp;
//! `REPL_BENCH_WORKERS=N` sets each replica's tokio worker threads (default 2, as the daemon);
//! `REPL_BENCH_PERF_CTL=FIFO` with `perf record --control=fifo:FIFO -D -1` profiles only the
//! resyncs).
//!
//! The resync part compares, for the same byte count on the same filesystem: a plain sequential
//! write (1 MiB `pwrite`s of the same pattern, one `fdatasync` at the end) against the time from
//! `connect` on the Primary until the SyncTarget is UpToDate (handshake, transfer and the target's
//! final flush and metadata write included), medians of the runs, plus the CPU time the process
//! (both replicas) used meanwhile.
//!
//! ```text
//!   netns "main"                                         netns "backup"
//!   qemu-img bench ─loopback─▶ NBD ─▶ Primary ══ veth 192.168.56.0/24 ══▶ Secondary
//!   qemu-img bench ─loopback─▶ qemu-nbd (anchor)
//!   qemu-img bench ─loopback─▶ nbdkit file FILE (second anchor)
//! ```
//!
//! Each replica runs in-process on a tokio runtime whose threads entered the host's namespace.
//! Besides the table it prints the QD1 FUA latency bound of the issue — qemu-nbd + one round trip
//! on the replication link + one fdatasync of a 4 KiB write on the same disk, each measured in
//! the same run — and where the time of a QD1 FUA write goes inside rempart (local disk versus
//! the rest), and, per run on stderr, the same for a 1 MiB QD4 write (local write, peer
//! acknowledgement, the Secondary's own write).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockrepl::io::{self, Admin, Handle, Histogram, LinkConfig};
use blockrepl::meta::Meta;
use blockrepl::nbd::NbdServer;
use blockrepl::proto::{auth_key, Config, DiskState, Protocol, ReplState};
use rempart_benches::physical::{self, Bound, Plausibility, Spinner, MAX_FACTOR, MIN_FRACTION};
use rempart_benches::{markdown_table, median, AnchorCheck, Row};
use rempart_testkit::Lab;

const SIZE: u64 = 512 << 20;
const MAIN_IP: [u8; 4] = [192, 168, 56, 10];
const BACKUP_IP: [u8; 4] = [192, 168, 56, 20];

fn image(dir: &Path, name: &str) -> PathBuf {
    image_sized(dir, name, SIZE)
}

fn image_sized(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// One workload: qemu-img bench arguments and how to turn seconds into the metric.
struct Workload {
    name: &'static str,
    args: &'static [&'static str],
    count: u64,
    /// Converts (seconds, count) to the reported value.
    metric: fn(f64, u64) -> f64,
    /// Run with a CPU-bound sibling process (see [`Spinner`]).
    spin: bool,
}

const QD1: usize = 0;
const QD1_SPIN: usize = 1;
const QD32: usize = 2;
const SEQ: usize = 3;

/// Configurations, by index (`REPL_BENCH_CONFIGS`).
const QEMU_NBD: usize = 0;
const PROTO_C: usize = 1;
const NO_PEER: usize = 4;
const NBDKIT: usize = 5;

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "4 KiB write QD1 FUA latency (µs)",
        args: &["-t", "writethrough", "-s", "4k", "-d", "1"],
        count: 3000,
        metric: |s, c| s / c as f64 * 1e6,
        spin: false,
    },
    Workload {
        name: "same, one CPU kept busy (µs)",
        args: &["-t", "writethrough", "-s", "4k", "-d", "1"],
        count: 3000,
        metric: |s, c| s / c as f64 * 1e6,
        spin: true,
    },
    Workload {
        name: "4 KiB write QD32 (kIOPS)",
        args: &["-t", "none", "-s", "4k", "-d", "32"],
        count: 40000,
        metric: |s, c| c as f64 / s / 1000.0,
        spin: false,
    },
    Workload {
        name: "1 MiB sequential write QD4 (MiB/s)",
        args: &["-t", "none", "-s", "1M", "-d", "4"],
        count: 800,
        metric: |s, c| c as f64 / s,
        spin: false,
    },
];

/// A tokio runtime whose threads live in a lab host's network namespace: every socket its tasks
/// open is in that namespace. Dropping it shuts the runtime down (closing every socket and file
/// of the replicas on it).
struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    fn start(lab: &Lab, host: &str) -> NsRuntime {
        let path = format!("/run/netns/{}", lab.netns(host));
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // Worker threads are started from this thread and inherit its namespace.
            // Two workers, as `rempart-repl run` (`REPL_BENCH_WORKERS=N` for A/B runs).
            let workers = std::env::var("REPL_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
            htx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        NsRuntime { handle: hrx.recv().unwrap(), stop: Some(stop), thread: Some(thread) }
    }

    /// Runs `f` on this runtime's threads (inside the namespace) and waits for it.
    fn run<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        let j = self.handle.spawn(f);
        futures_block_on(j).unwrap()
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for a future from a plain thread (outside any runtime).
fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
}

fn qemu_img_bench(lab: &Lab, url: &str, w: &Workload) -> f64 {
    // Start every measurement with no dirty pages from the previous one (fsync latency depends
    // on background writeback).
    let _ = Command::new("sync").status();
    let _spin = w.spin.then(|| Spinner::start().expect("busy-loop process"));
    let count = w.count.to_string();
    let out = lab
        .cmd("main", "qemu-img")
        .args(["bench", "-f", "raw", "-w", "-c", &count])
        .args(w.args)
        .arg(url)
        .output()
        .expect("qemu-img");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-img bench failed: {text}");
    let secs: f64 = text
        .split("Run completed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected qemu-img output: {text}"));
    (w.metric)(secs, w.count)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// qemu-nbd serving `img` on loopback inside host `main`.
fn qemu_nbd(lab: &Lab, img: &Path) -> (rempart_testkit::Proc, String) {
    let port = free_port();
    let mut c = lab.cmd("main", "qemu-nbd");
    c.args(["-f", "raw", "-x", "r0", "-b", "127.0.0.1", "-p", &port.to_string(), "-t"])
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = lab.spawn("main", c).expect("qemu-nbd");
    let url = format!("nbd://127.0.0.1:{port}/r0");
    rempart_testkit::wait::until(Duration::from_secs(10), "qemu-nbd listening", || {
        lab.enter("main", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).unwrap_or(false)
    })
    .unwrap();
    (p, url)
}

/// nbdkit's file plugin serving `img` on loopback inside host `main`: the second anchor.
fn nbdkit(lab: &Lab, img: &Path) -> (rempart_testkit::Proc, String) {
    let port = free_port();
    let mut c = lab.cmd("main", "nbdkit");
    c.args(["--foreground", "-i", "127.0.0.1", "-p", &port.to_string(), "file"])
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = lab.spawn("main", c).expect("nbdkit");
    let url = format!("nbd://127.0.0.1:{port}/r0");
    rempart_testkit::wait::until(Duration::from_secs(10), "nbdkit listening", || {
        lab.enter("main", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).unwrap_or(false)
    })
    .unwrap();
    (p, url)
}

fn replica(
    rt: &NsRuntime,
    dir: &Path,
    name: &str,
    size: u64,
    proto: Protocol,
    me: [u8; 4],
    peer: Option<[u8; 4]>,
) -> Handle {
    let img = image_sized(dir, &format!("{name}.img"), size);
    let meta = dir.join(format!("{name}.img.md"));
    io::store_meta(&meta, &Meta::fresh(size)).unwrap();
    let tiebreak = peer.is_some();
    let mut cfg = Config::new(auth_key(b"bench secret"), tiebreak, u64::from(me[3]));
    cfg.protocol = proto;
    cfg.resync_rate = 4 << 30;
    let link = LinkConfig { listen: SocketAddr::from((me, 7789)), dial: peer.map(|p| SocketAddr::from((p, 7789))) };
    rt.run(async move { io::start(cfg, &img, &meta, link).await.unwrap() })
}

async fn wait_until(h: &Handle, what: &str, f: impl Fn(&blockrepl::proto::Status) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let s = h.status().await.unwrap();
        if f(&s) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn in_sync(s: &blockrepl::proto::Status) -> bool {
    s.replication == ReplState::Established
        && s.disk == DiskState::UpToDate
        && s.out_of_sync_bytes == 0
        && s.peer_disk == Some(DiskState::UpToDate)
}

/// A Primary in `main` (with its peer in `backup` when `peer`), served over NBD on main's
/// loopback. The runtimes own everything: drop them to stop.
struct Served {
    a: Handle,
    b: Option<Handle>,
    url: String,
    _rts: Vec<NsRuntime>,
}

fn served(lab: &Lab, dir: &Path, size: u64, proto: Protocol, peer: bool) -> Served {
    let main_rt = NsRuntime::start(lab, "main");
    let a = replica(&main_rt, dir, "a", size, proto, MAIN_IP, Some(BACKUP_IP));
    let mut rts = Vec::new();
    let b = if peer {
        let backup_rt = NsRuntime::start(lab, "backup");
        let b = replica(&backup_rt, dir, "b", size, proto, BACKUP_IP, None);
        rts.push(backup_rt);
        Some(b)
    } else {
        None
    };
    let a2 = a.clone();
    let port = main_rt.run(async move {
        a2.admin(Admin::Primary { force: true }).await.unwrap();
        if peer {
            wait_until(&a2, "initial sync", in_sync).await;
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(NbdServer::new("r0", Arc::new(a2)).serve_tcp(l));
        port
    });
    rts.insert(0, main_rt);
    Served { a, b, url: format!("nbd://127.0.0.1:{port}/r0"), _rts: rts }
}

/// Median TCP round trip (µs) on the replication link, main → backup, 64-byte messages with
/// `TCP_NODELAY`, as the replication frames travel.
fn link_rtt_us(lab: &Lab) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backup = NsRuntime::start(lab, "backup");
    let main = NsRuntime::start(lab, "main");
    let l = backup.run(async { tokio::net::TcpListener::bind(SocketAddr::from((BACKUP_IP, 7790))).await.unwrap() });
    backup.handle.spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).await.is_ok() {
            if s.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let samples = main.run(async {
        let mut s = tokio::net::TcpStream::connect(SocketAddr::from((BACKUP_IP, 7790))).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [7u8; 64];
        let mut v = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            s.write_all(&b).await.unwrap();
            s.read_exact(&mut b).await.unwrap();
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        v
    });
    median(&samples).unwrap()
}

/// Mean of the observations added to `after` since `before`, in µs.
fn mean_since(before: &Histogram, after: &Histogram) -> f64 {
    let n = after.count.saturating_sub(before.count);
    if n == 0 {
        return f64::NAN;
    }
    (after.sum - before.sum) / n as f64 * 1e6
}

/// With `REPL_BENCH_PERF_CTL=FIFO`, writes `enable` / `disable` to a `perf record
/// --control=fifo:FIFO -D -1` control FIFO, so that a profile covers the resync only.
fn perf_ctl(cmd: &str) {
    if let Ok(p) = std::env::var("REPL_BENCH_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
            let _ = writeln!(f, "{cmd}");
        }
    }
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("REPL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap()
}

/// What serves the NBD export in one configuration.
#[derive(Clone, Copy)]
enum Server {
    QemuNbd,
    Nbdkit,
    Rempart(Protocol, bool),
}

/// Physical references of one repetition (`rempart_benches::physical`).
struct Refs {
    disk_idle: physical::Disk,
    disk_busy: physical::Disk,
    lo: physical::Loopback,
}

/// The medians of the repetitions' physical references, and per workload what they allow.
struct Allowed {
    sync_4k_idle: f64,
    sync_4k_busy: f64,
    write_4k: f64,
    stream: f64,
    lo_mibs: f64,
    lo_rtt: f64,
}

impl Allowed {
    fn of(refs: &[Refs]) -> Allowed {
        let m = |f: &dyn Fn(&Refs) -> f64| median(&refs.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN);
        Allowed {
            sync_4k_idle: m(&|r| r.disk_idle.sync_4k_us),
            sync_4k_busy: m(&|r| r.disk_busy.sync_4k_us),
            write_4k: m(&|r| r.disk_idle.write_4k_us),
            stream: m(&|r| r.disk_idle.stream_mibs),
            lo_mibs: m(&|r| r.lo.mibs),
            lo_rtt: m(&|r| r.lo.rtt_us),
        }
    }

    /// What bounds an NBD server's figure for workload `wi`.
    fn check(&self, wi: usize) -> AnchorCheck {
        let (reference, bound) = match wi {
            QD1 | QD1_SPIN => {
                let (sync, cond) = if wi == QD1 { (self.sync_4k_idle, "idle") } else { (self.sync_4k_busy, "busy") };
                let cost = self.lo_rtt + sync;
                (
                    format!(
                        "loopback RTT {:.1} µs + 4 KiB pwrite+fdatasync ({cond}) {sync:.1} µs = {cost:.1} µs",
                        self.lo_rtt
                    ),
                    Bound::Cost { reference: cost, max_factor: MAX_FACTOR },
                )
            }
            QD32 => {
                let kiops = 1e3 / (self.lo_rtt + self.write_4k);
                (
                    format!(
                        "one request at a time: 1 / (loopback RTT {:.1} µs + 4 KiB pwrite {:.2} µs) = {kiops:.1} kIOPS",
                        self.lo_rtt, self.write_4k
                    ),
                    Bound::Rate { reference: kiops, min_fraction: MIN_FRACTION },
                )
            }
            _ => {
                let mibs = self.stream.min(self.lo_mibs);
                (
                    format!(
                        "min(1 MiB pwrite stream + fdatasync {:.0} MiB/s, loopback TCP {:.0} MiB/s) = {mibs:.0} MiB/s",
                        self.stream, self.lo_mibs
                    ),
                    Bound::Rate { reference: mibs, min_fraction: MIN_FRACTION },
                )
            }
        };
        AnchorCheck::Against { reference, bound }
    }
}

/// The anchor a verdict is taken from: the first plausible one of `anchors` (name, median,
/// plausibility), or `None` when none is.
fn deciding<'a>(anchors: &[(&'a str, f64, Plausibility)]) -> Option<(&'a str, f64)> {
    anchors.iter().find(|a| a.2.is_plausible()).map(|a| (a.0, a.1))
}

/// Why there is no verdict: each anchor's reason.
fn no_verdict(anchors: &[(&str, f64, Plausibility)]) -> String {
    let why: Vec<String> = anchors.iter().map(|(n, _, p)| format!("{n}: {p}")).collect();
    format!("no verdict (no plausible anchor; {})", why.join("; "))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run anyway.
    if !rempart_testkit::require_root("the replication bench runs the peer in a network namespace") {
        return;
    }
    let reps: usize = std::env::var("REPL_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let pick =
        |var: &str, i: usize| std::env::var(var).map_or(true, |v| v.split(',').any(|x| x.trim() == i.to_string()));
    let mut lab = Lab::new().unwrap();
    lab.add_host("main").unwrap();
    lab.add_host("backup").unwrap();
    lab.link("main", "backup", "192.168.56.10/24", "192.168.56.20/24").unwrap();

    let configs: &[(&str, Server)] = &[
        ("qemu-nbd, plain file", Server::QemuNbd),
        ("rempart protocol C, peer in another netns", Server::Rempart(Protocol::C, true)),
        ("rempart protocol B, peer in another netns", Server::Rempart(Protocol::B, true)),
        ("rempart protocol A, peer in another netns", Server::Rempart(Protocol::A, true)),
        ("rempart Primary, no peer", Server::Rempart(Protocol::C, false)),
        ("nbdkit file plugin, plain file", Server::Nbdkit),
    ];
    // samples[config][workload]
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); WORKLOADS.len()]; configs.len()];
    // QD1 FUA breakdown per config: (client-visible mean in the replica, local write+fdatasync mean).
    let mut breakdown: Vec<Vec<Vec<(f64, f64)>>> = vec![vec![Vec::new(); 2]; configs.len()];
    let mut rtt = Vec::new();
    let mut refs = Vec::new();
    for _ in 0..reps {
        drop_page_cache();
        rtt.push(link_rtt_us(&lab));
        {
            let dir = bench_dir();
            let disk_idle = physical::disk(dir.path()).expect("disk reference");
            let disk_busy = {
                let _spin = Spinner::start().expect("busy-loop process");
                physical::disk(dir.path()).expect("disk reference, one CPU busy")
            };
            let lo = lab.enter("main", physical::loopback).unwrap().expect("loopback reference in main");
            eprintln!("physical references: {disk_idle}; one CPU busy: {disk_busy}; main's {lo}");
            refs.push(Refs { disk_idle, disk_busy, lo });
        }
        // The references wrote a few hundred MiB: every configuration starts from the same state.
        drop_page_cache();
        for (ci, (name, cfg)) in configs.iter().enumerate() {
            if !pick("REPL_BENCH_CONFIGS", ci) {
                continue;
            }
            let dir = bench_dir();
            match cfg {
                Server::QemuNbd | Server::Nbdkit => {
                    let img = image(dir.path(), "q.img");
                    let (_server, url) =
                        if matches!(cfg, Server::QemuNbd) { qemu_nbd(&lab, &img) } else { nbdkit(&lab, &img) };
                    for (wi, w) in WORKLOADS.iter().enumerate() {
                        if pick("REPL_BENCH_WORKLOADS", wi) {
                            samples[ci][wi].push(qemu_img_bench(&lab, &url, w));
                        }
                    }
                }
                Server::Rempart(proto, peer) => {
                    let s = served(&lab, dir.path(), SIZE, *proto, *peer);
                    for (wi, w) in WORKLOADS.iter().enumerate() {
                        if pick("REPL_BENCH_WORKLOADS", wi) {
                            let (c0, l0) = (s.a.latency(), s.a.local_latency());
                            let (p0, b0) = (s.a.peer_latency(), s.b.as_ref().map(Handle::local_latency));
                            samples[ci][wi].push(qemu_img_bench(&lab, &s.url, w));
                            if wi == SEQ {
                                // Where a 1 MiB write's time goes (means over this run, µs): the
                                // Primary's client-visible write, its local write, the peer's
                                // acknowledgement, and the Secondary's own local write.
                                eprintln!(
                                    "{name}: 1 MiB QD4 inside rempart (µs): write {:.0}, local {:.0}, peer ack {:.0}, peer's local {:.0}",
                                    mean_since(&c0, &s.a.latency()),
                                    mean_since(&l0, &s.a.local_latency()),
                                    mean_since(&p0, &s.a.peer_latency()),
                                    s.b.as_ref().zip(b0.as_ref()).map_or(f64::NAN, |(b, b0)| mean_since(b0, &b.local_latency())),
                                );
                            }
                            if wi == QD1 || wi == QD1_SPIN {
                                breakdown[ci][usize::from(wi == QD1_SPIN)]
                                    .push((mean_since(&c0, &s.a.latency()), mean_since(&l0, &s.a.local_latency())));
                            }
                        }
                    }
                    drop(s);
                }
            }
        }
    }
    let allowed = Allowed::of(&refs);
    println!("\n## Physical references ({} runs, medians; issue 14: anchors are checked against them)\n", refs.len());
    println!(
        "disk {}: 4 KiB pwrite+fdatasync {:.1} µs idle, {:.1} µs with one CPU busy; 4 KiB pwrite {:.2} µs; \
         {} MiB of 1 MiB pwrites + one fdatasync {:.0} MiB/s",
        refs.first().map_or("?".into(), |r| r.disk_idle.dir.parent().unwrap_or(&r.disk_idle.dir).display().to_string()),
        allowed.sync_4k_idle,
        allowed.sync_4k_busy,
        allowed.write_4k,
        physical::STREAM_MIB,
        allowed.stream
    );
    println!("netns main loopback TCP: {:.0} MiB/s, RTT {:.1} µs", allowed.lo_mibs, allowed.lo_rtt);
    println!("\n## NBD writes through qemu-img bench ({reps} runs, medians)\n");
    println!("| configuration | {} |", WORKLOADS.iter().map(|w| w.name).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---:|".repeat(WORKLOADS.len()));
    for (ci, (name, _)) in configs.iter().enumerate() {
        let cells: Vec<String> = samples[ci].iter().map(|s| format!("{:.1}", median(s).unwrap_or(f64::NAN))).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    // Each anchor's plausibility per workload, printed with the reference that bounds it.
    let anchors = [(QEMU_NBD, "qemu-nbd"), (NBDKIT, "nbdkit")];
    let med = |ci: usize, wi: usize| median(&samples[ci][wi]).unwrap_or(f64::NAN);
    let plaus = |ci: usize, wi: usize| {
        allowed.check(wi).judge(med(ci, wi)).unwrap_or_else(|| Plausibility::Implausible("not checked".into()))
    };
    println!("\n## Anchors against the physical references\n");
    for (wi, w) in WORKLOADS.iter().enumerate() {
        for (ci, an) in anchors {
            if samples[ci][wi].is_empty() {
                continue;
            }
            println!("{an}, {}: {:.1} → {}", w.name, med(ci, wi), allowed.check(wi).cell(med(ci, wi)));
        }
    }
    for (ci, an) in anchors {
        let mut rows = Vec::new();
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for (ours, label) in [(PROTO_C, "protocol C"), (NO_PEER, "no peer")] {
                if samples[ours][wi].is_empty() || samples[ci][wi].is_empty() {
                    continue;
                }
                rows.push(Row {
                    metric: format!("{} — {label}", w.name),
                    ours: samples[ours][wi].clone(),
                    anchor: samples[ci][wi].clone(),
                    check: allowed.check(wi),
                });
            }
        }
        if !rows.is_empty() {
            println!("\n{}", markdown_table(an, &rows));
        }
    }

    let rtt_m = median(&rtt).unwrap_or(f64::NAN);
    println!("## QD1 FUA latency bound (issue 4: protocol C ≤ anchor + one RTT + one peer fdatasync)\n");
    println!("replication link RTT (median of {} runs): {rtt_m:.1} µs\n", rtt.len());
    for (wi, fsync_m, label) in
        [(QD1, allowed.sync_4k_idle, "idle machine"), (QD1_SPIN, allowed.sync_4k_busy, "one CPU kept busy")]
    {
        let c = med(PROTO_C, wi);
        let cands: Vec<(&str, f64, Plausibility)> =
            anchors.iter().map(|&(ci, an)| (an, med(ci, wi), plaus(ci, wi))).collect();
        let bounds: Vec<String> = cands
            .iter()
            .map(|(an, q, _)| format!("{an} {q:.1} + {rtt_m:.1} + {fsync_m:.1} = {:.1}", q + rtt_m + fsync_m))
            .collect();
        let verdict = match deciding(&cands) {
            Some((an, q)) => {
                let bound = q + rtt_m + fsync_m;
                format!(
                    "{} (against {an}: {c:.1} vs {bound:.1} µs)",
                    if c <= bound { "HOLDS" } else { "DOES NOT HOLD" }
                )
            }
            None => no_verdict(&cands),
        };
        println!(
            "{label}: 4 KiB write + fdatasync {fsync_m:.1} µs; bounds: {} µs; protocol C = {c:.1} µs -> {verdict}",
            bounds.join(", ")
        );
    }
    let cands: Vec<(&str, f64, Plausibility)> =
        anchors.iter().map(|&(ci, an)| (an, med(ci, SEQ), plaus(ci, SEQ))).collect();
    let c_seq = med(PROTO_C, SEQ);
    let ratios: Vec<String> = cands.iter().map(|(an, a, p)| format!("/ {an} = {:.2} ({p})", c_seq / a)).collect();
    println!("\n1 MiB sequential, protocol C {}", ratios.join(", "));
    let verdict = match deciding(&cands) {
        Some((an, a)) => {
            let r = c_seq / a;
            format!("{r:.2} against {an} (target ≥ 0.70) -> {}", if r >= 0.7 { "MET" } else { "NOT MET" })
        }
        None => no_verdict(&cands),
    };
    println!("1 MiB sequential verdict: {verdict}\n");
    println!("QD1 FUA inside rempart (medians of per-run means): client-visible write latency in the replica");
    println!("vs its local pwrite + fdatasync; the rest is the peer round trip, queueing and task hand-offs.\n");
    println!(
        "| configuration | CPU | replica write (µs) | local pwrite+fdatasync (µs) | rest (µs) | at qemu-img (µs) |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (ci, (name, _)) in configs.iter().enumerate() {
        for (k, (wi, label)) in [(QD1, "idle"), (QD1_SPIN, "busy")].into_iter().enumerate() {
            let b = &breakdown[ci][k];
            if b.is_empty() {
                continue;
            }
            let cl = median(&b.iter().map(|x| x.0).collect::<Vec<_>>()).unwrap_or(f64::NAN);
            let lo = median(&b.iter().map(|x| x.1).collect::<Vec<_>>()).unwrap_or(f64::NAN);
            let e2e = median(&samples[ci][wi]).unwrap_or(f64::NAN);
            println!("| {name} | {label} | {cl:.1} | {lo:.1} | {:.1} | {e2e:.1} |", cl - lo);
        }
    }

    // Resync of a dirty region versus a plain sequential write on the same disk.
    if std::env::var("REPL_BENCH_RESYNC").is_ok_and(|v| v == "0") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("REPL_BENCH_RESYNC_MIB")
        .unwrap_or_else(|_| "128,512".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for mib in sizes {
        resync_vs_plain(&lab, mib, reps);
    }
}

/// Writes dirty pages back and empties the page cache before each repetition, so that every
/// configuration starts from the same memory state (`REPL_BENCH_DROP_CACHES=0` skips it). With
/// a page cache filled by earlier work, page reclaim costs the replicated path (two processes,
/// four copies per byte) much more than a plain write: on this VM with 1.8 GB free the resync
/// measured 0.49-0.51x the plain write and protocol C 0.59x qemu-nbd, against 1.13-1.34x and
/// 0.73x after a drop (see docs/repl.md).
fn drop_page_cache() {
    if std::env::var("REPL_BENCH_DROP_CACHES").is_ok_and(|v| v == "0") {
        return;
    }
    let _ = Command::new("sync").status();
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("could not drop the page cache ({e}); results depend on its state");
    }
}

/// Times of one plain sequential write: the `pwrite`s, then the one `fdatasync`.
struct Plain {
    write: Duration,
    sync: Duration,
    /// CPU time of this process (user + system, all threads) meanwhile.
    cpu: Duration,
}

/// CPU time (user + system) of this process so far, all threads: `/proc/self/stat` fields 14
/// and 15, in clock ticks (100 per second on Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').skip(11).take(2).map(|v| v.parse().unwrap()).collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Writes `mib` MiB of the resync's byte pattern to a fresh file of the bench filesystem, 1 MiB
/// per `pwrite`, then one `fdatasync`.
fn plain_sequential_write(dir: &Path, mib: u64) -> Plain {
    use std::os::unix::fs::FileExt;
    let p = image_sized(dir, "plain.img", mib << 20);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let cpu = process_cpu();
    let start = Instant::now();
    for i in 0..mib {
        f.write_all_at(&buf, i << 20).unwrap();
    }
    let write = start.elapsed();
    f.sync_data().unwrap();
    Plain { write, sync: start.elapsed() - write, cpu: process_cpu() - cpu }
}

/// Times of one resync, from `connect` on the Primary.
struct Resync {
    /// Until the target is SyncTarget (handshake, generation identifiers, bitmaps exchanged).
    handshake: Duration,
    /// Until the source holds no out-of-sync block: every range sent, written and acknowledged.
    transfer: Duration,
    /// Until the target is UpToDate: its final data flush and metadata write.
    total: Duration,
    /// CPU time of this process (both replicas, user + system, all threads) meanwhile.
    cpu: Duration,
}

/// A protocol-C pair in sync, then `disconnect`, `mib` MiB written through NBD on the Primary
/// (1 MiB sequential writes), `sync`, then `connect` timed until the target is UpToDate.
fn resync_once(lab: &Lab, dir: &Path, mib: u64) -> Resync {
    let s = served(lab, dir, (mib << 20).max(SIZE) + (64 << 20), Protocol::C, true);
    let a = s.a.clone();
    futures_block_on(a.admin(Admin::Disconnect)).unwrap();
    let count = mib.to_string();
    let out = lab
        .cmd("main", "qemu-img")
        .args(["bench", "-f", "raw", "-w", "-t", "none", "-s", "1M", "-d", "4", "-c", &count, "--pattern", "90"])
        .arg(&s.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let oos = futures_block_on(a.status()).unwrap().out_of_sync_bytes;
    assert_eq!(oos, mib << 20);
    let _ = Command::new("sync").status();
    let b = s.b.clone().unwrap();
    perf_ctl("enable");
    let cpu = process_cpu();
    let mut r = futures_block_on(async move {
        let start = Instant::now();
        a.admin(Admin::Connect { discard_my_data: false }).await.unwrap();
        let (mut handshake, mut transfer) = (None, None);
        loop {
            let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
            let now = start.elapsed();
            if handshake.is_none() && sb.replication == ReplState::SyncTarget {
                handshake = Some(now);
            }
            if handshake.is_some() && transfer.is_none() && sa.out_of_sync_bytes == 0 {
                transfer = Some(now);
            }
            // Done when the target has flushed and recorded itself UpToDate.
            if sb.disk == DiskState::UpToDate && sb.replication == ReplState::Established {
                return Resync {
                    handshake: handshake.unwrap_or(now),
                    transfer: transfer.unwrap_or(now),
                    total: now,
                    cpu: Duration::ZERO,
                };
            }
            assert!(now < Duration::from_secs(300), "resync: {sa:?} {sb:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    r.cpu = process_cpu() - cpu;
    perf_ctl("disable");
    drop(s);
    r
}

/// Resync throughput of a `mib` MiB dirty region versus a plain sequential write of the same
/// bytes to the same filesystem with one `fdatasync` at the end; medians of `reps` runs.
fn resync_vs_plain(lab: &Lab, mib: u64, reps: usize) {
    let mut resync = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..reps {
        drop_page_cache();
        let dir = bench_dir();
        let p = plain_sequential_write(dir.path(), mib);
        std::fs::remove_file(dir.path().join("plain.img")).unwrap();
        let _ = Command::new("sync").status();
        let r = resync_once(lab, dir.path(), mib);
        eprintln!(
            "resync {mib} MiB: handshake {:?}, transfer {:?}, UpToDate {:?}, CPU {:?}; plain write {:?} + fdatasync {:?}, \
             CPU {:?}",
            r.handshake, r.transfer, r.total, r.cpu, p.write, p.sync, p.cpu
        );
        plain.push(p);
        resync.push(r);
    }
    let ms =
        |v: Vec<Duration>| median(&v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    println!("\n## Resync of a {mib} MiB dirty region vs plain sequential write + fdatasync ({reps} runs)\n");
    let mibs = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "{}",
        markdown_table(
            "plain write",
            &[Row {
                metric: "throughput (MiB/s)".into(),
                ours: resync.iter().map(|r| mibs(r.total)).collect(),
                anchor: plain.iter().map(|p| mibs(p.write + p.sync)).collect(),
                check: AnchorCheck::NotChecked(
                    "the anchor is itself the physical reference (raw 1 MiB pwrites + one fdatasync, same file system)"
                ),
            }]
        )
    );
    println!(
        "resync medians: handshake {:.1} ms, until the source has every ack {:.1} ms, until the target is UpToDate \
         {:.1} ms, process CPU time {:.0} ms; plain: pwrite {:.1} ms + fdatasync {:.1} ms, CPU time {:.0} ms",
        ms(resync.iter().map(|r| r.handshake).collect()),
        ms(resync.iter().map(|r| r.transfer).collect()),
        ms(resync.iter().map(|r| r.total).collect()),
        ms(resync.iter().map(|r| r.cpu).collect()),
        ms(plain.iter().map(|p| p.write).collect()),
        ms(plain.iter().map(|p| p.sync).collect()),
        ms(plain.iter().map(|p| p.cpu).collect()),
    );
    let ratio = median(&resync.iter().map(|r| mibs(r.total)).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        / median(&plain.iter().map(|p| mibs(p.write + p.sync)).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    println!(
        "resync {mib} MiB / plain write = {ratio:.2} (target ≥ 0.80) -> {}",
        if ratio >= 0.8 { "MET" } else { "NOT MET" }
    );
}
