//! NBD write performance: qemu-nbd serving a plain file (the anchor) versus rempart's replicated
//! volume, same machine, same run, same client (`qemu-img bench`), backing files on the same
//! filesystem. Also resync throughput of a dirty region versus a plain sequential write.
//!
//! Run: `cargo bench -p rempart-benches --bench repl_nbd` (env `REPL_BENCH_REPS`, default 3).
//! Everything runs on loopback; the replicated pair runs in this process.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockrepl::io::{self, Admin, Handle, LinkConfig};
use blockrepl::meta::Meta;
use blockrepl::nbd::NbdServer;
use blockrepl::proto::{auth_key, Config, Protocol, ReplState};
use rempart_benches::{markdown_table, median, Row};

const SIZE: u64 = 512 << 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(SIZE).unwrap();
    p
}

/// One workload: qemu-img bench arguments and how to turn seconds into the metric.
struct Workload {
    name: &'static str,
    args: &'static [&'static str],
    count: u64,
    /// Converts (seconds, count) to the reported value.
    metric: fn(f64, u64) -> f64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "4 KiB write QD1 FUA latency (µs)",
        args: &["-t", "writethrough", "-s", "4k", "-d", "1"],
        count: 4000,
        metric: |s, c| s / c as f64 * 1e6,
    },
    Workload {
        name: "4 KiB write QD32 (kIOPS)",
        args: &["-t", "none", "-s", "4k", "-d", "32"],
        count: 40000,
        metric: |s, c| c as f64 / s / 1000.0,
    },
    Workload {
        name: "1 MiB sequential write QD4 (MiB/s)",
        args: &["-t", "none", "-s", "1M", "-d", "4"],
        count: 400,
        metric: |s, c| c as f64 / s,
    },
];

fn qemu_img_bench(url: &str, w: &Workload) -> f64 {
    // Start every measurement with no dirty pages from the previous one (fsync latency depends
    // on background writeback).
    let _ = Command::new("sync").status();
    let count = w.count.to_string();
    let out = Command::new("qemu-img")
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

struct QemuNbd(Child);

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_nbd(img: &Path) -> (QemuNbd, String) {
    let port = free_port();
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "r0", "-b", "127.0.0.1", "-p", &port.to_string(), "-t"])
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let url = format!("nbd://127.0.0.1:{port}/r0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (QemuNbd(child), url)
}

async fn replica(dir: &Path, name: &str, proto: Protocol, tiebreak: bool, listen: u16, dial: Option<u16>) -> Handle {
    let img = image(dir, &format!("{name}.img"));
    let meta = dir.join(format!("{name}.img.md"));
    io::store_meta(&meta, &Meta::fresh(SIZE)).unwrap();
    let mut cfg = Config::new(auth_key(b"bench secret"), tiebreak, u64::from(listen));
    cfg.protocol = proto;
    cfg.resync_rate = 4 << 30;
    let link = LinkConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], listen)),
        dial: dial.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
    };
    io::start(cfg, &img, &meta, link).await.unwrap()
}

async fn wait_synced(h: &Handle) -> Duration {
    let start = Instant::now();
    loop {
        let s = h.status().await.unwrap();
        if s.replication == ReplState::Established && s.out_of_sync_bytes == 0 && s.peer_disk.is_some() {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no sync: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A Primary (with a peer over loopback when `peer` is set) served over NBD.
async fn served(dir: &Path, proto: Protocol, peer: bool) -> (Handle, Option<Handle>, String) {
    let (pa, pb) = (free_port(), free_port());
    let a = replica(dir, "a", proto, true, pa, Some(pb)).await;
    let b = if peer { Some(replica(dir, "b", proto, false, pb, None).await) } else { None };
    a.admin(Admin::Primary { force: true }).await.unwrap();
    if peer {
        wait_synced(&a).await;
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nbd://127.0.0.1:{}/r0", l.local_addr().unwrap().port());
    tokio::spawn(NbdServer::new("r0", Arc::new(a.clone())).serve_tcp(l));
    (a, b, url)
}

fn plain_sequential_write_mibs(dir: &Path, mib: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    let p = image(dir, "plain.img");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    for i in 0..mib {
        f.write_all_at(&buf, (i as u64) << 20).unwrap();
    }
    f.sync_data().unwrap();
    mib as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run anyway.
    let reps: usize = std::env::var("REPL_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let configs: &[(&str, Option<(Protocol, bool)>)] = &[
        ("qemu-nbd, plain file", None),
        ("rempart protocol C, peer on loopback", Some((Protocol::C, true))),
        ("rempart protocol B, peer on loopback", Some((Protocol::B, true))),
        ("rempart protocol A, peer on loopback", Some((Protocol::A, true))),
        ("rempart Primary, no peer", Some((Protocol::C, false))),
    ];
    // samples[config][workload]
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); WORKLOADS.len()]; configs.len()];
    for _ in 0..reps {
        for (ci, (_, cfg)) in configs.iter().enumerate() {
            let dir =
                tempfile::tempdir_in(std::env::var("REPL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
            match cfg {
                None => {
                    let img = image(dir.path(), "q.img");
                    let (_q, url) = qemu_nbd(&img);
                    for (wi, w) in WORKLOADS.iter().enumerate() {
                        samples[ci][wi].push(qemu_img_bench(&url, w));
                    }
                }
                Some((proto, peer)) => {
                    let (_a, _b, url) = rt.block_on(served(dir.path(), *proto, *peer));
                    for (wi, w) in WORKLOADS.iter().enumerate() {
                        samples[ci][wi].push(qemu_img_bench(&url, w));
                    }
                }
            }
        }
    }
    println!("\n## NBD writes through qemu-img bench ({reps} runs, medians)\n");
    println!("| configuration | {} |", WORKLOADS.iter().map(|w| w.name).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---:|".repeat(WORKLOADS.len()));
    for (ci, (name, _)) in configs.iter().enumerate() {
        let cells: Vec<String> = samples[ci].iter().map(|s| format!("{:.1}", median(s).unwrap_or(f64::NAN))).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let mut rows = Vec::new();
    for (wi, w) in WORKLOADS.iter().enumerate() {
        rows.push(Row {
            metric: format!("{} — protocol C", w.name),
            ours: samples[1][wi].clone(),
            anchor: samples[0][wi].clone(),
        });
        rows.push(Row {
            metric: format!("{} — no peer", w.name),
            ours: samples[4][wi].clone(),
            anchor: samples[0][wi].clone(),
        });
    }
    println!("\n{}", markdown_table("qemu-nbd", &rows));

    // Resync of a dirty region versus a plain sequential write on the same disk.
    let mut resync = Vec::new();
    let mut plain = Vec::new();
    const DIRTY_MIB: usize = 128;
    for _ in 0..reps {
        let dir = tempfile::tempdir_in(std::env::var("REPL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
        plain.push(plain_sequential_write_mibs(dir.path(), DIRTY_MIB));
        let mibs = rt.block_on(async {
            let (a, _b, url) = served(dir.path(), Protocol::C, true).await;
            a.admin(Admin::Disconnect).await.unwrap();
            let count = DIRTY_MIB.to_string();
            let url2 = url.clone();
            tokio::task::spawn_blocking(move || {
                let out = Command::new("qemu-img")
                    .args([
                        "bench",
                        "-f",
                        "raw",
                        "-w",
                        "-t",
                        "none",
                        "-s",
                        "1M",
                        "-d",
                        "4",
                        "-c",
                        &count,
                        "--pattern",
                        "90",
                    ])
                    .arg(&url2)
                    .output()
                    .unwrap();
                assert!(out.status.success());
            })
            .await
            .unwrap();
            let oos = a.status().await.unwrap().out_of_sync_bytes;
            assert_eq!(oos, (DIRTY_MIB as u64) << 20);
            a.admin(Admin::Connect { discard_my_data: false }).await.unwrap();
            let t = wait_synced(&a).await;
            DIRTY_MIB as f64 / t.as_secs_f64()
        });
        resync.push(mibs);
    }
    println!("\n## Resync of a {DIRTY_MIB} MiB dirty region vs plain sequential write + fdatasync\n");
    println!(
        "{}",
        markdown_table("plain write", &[Row { metric: "throughput (MiB/s)".into(), ours: resync, anchor: plain }])
    );
}
