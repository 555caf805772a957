//! `rempart-node`'s controls on the lab with slapd on the volume: the backup that follows the
//! primary (the next primary continues the schedule; a demotion cancels a running backup
//! cleanly), `status` (text and the same
//! facts in /metrics), a planned `switchover` measured with the client writing through the VIP
//! (0 acknowledged entries lost, never two writers), and `maintenance on` (no automatic
//! failover: the standby does not take over when the primary's daemon dies; `off` lets it).
//! Root (namespaces, loop devices, FUSE).

use std::time::{Duration, Instant};

use rempart_lab::node::{two_writers, Endpoint, Failover, Stack, Traffic};
use rempart_lab::node_column::NodeColumn;
use rempart_testkit::wait;

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|r| r.trim().parse().ok()))
}

#[test]
fn status_switchover_and_maintenance() {
    let lab = rempart_lab::reference().unwrap();
    let mut stack = Stack::new(&lab).unwrap();
    stack.prepare(&lab).unwrap();
    let mut col = NodeColumn::new().unwrap();
    col.backup = true;
    col.start(&lab, &mut stack).unwrap();
    let archives = |prefix: &str| -> usize {
        let out = std::process::Command::new(rempart_lab::steps::sibling_binary("rempart-backup").unwrap())
            .args(["list", "--short"])
            .arg(NodeColumn::repository(&stack))
            .env("REMPART_PASSPHRASE", "lab backup passphrase")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(prefix)).count()
    };
    let backed_up = |col: &NodeColumn, host: &str| {
        col.status_of(&stack, host).is_some_and(|s| s["backup"]["last_success_unix"].is_number())
    };

    // The backup follows the data: the serving node backs the volume up at once (nothing
    // recorded yet: catching up), the standby does not.
    wait::until(Duration::from_secs(60), "main's first backup", || backed_up(&col, "main")).unwrap();
    assert_eq!(archives("main-"), 1);
    assert!(!backed_up(&col, "backup"));

    // status, as text: DRBD's and keepalived's words, the quorum, the steps of the transition.
    let (ok, text) = col.ctl(&stack, "main", &["status"]).unwrap();
    assert!(ok, "{text}");
    for want in [
        "main phase:serving",
        "vrrp VI_LDAP state:MASTER priority:150",
        "(held)",
        "r0 role:Primary",
        "disk:UpToDate",
        "peer connection:Connected role:Secondary peer-disk:UpToDate replication:Established",
        "witness 192.168.50.30:7790 connected:true lease:",
        "service slapd started:true",
        "last transition: up (VRRP MASTER)",
        "promote",
        "mount",
        "start service 0",
        "health check",
        "add VIP",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }
    let (ok, text) = col.ctl(&stack, "backup", &["status"]).unwrap();
    assert!(ok && text.contains("backup phase:idle") && text.contains("r0 role:Secondary"), "{text}");
    let m = col.scrape(&lab, "main").unwrap();
    assert_eq!(metric(&m, "rempart_node_phase{phase=\"serving\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_lease_valid"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_witness_connected"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_transitions_total{direction=\"up\",result=\"ok\"}"), Some(1.0), "{m}");
    assert!(metric(&m, "rempart_node_step_duration_seconds{step=\"mount\"}").is_some(), "{m}");
    assert!(metric(&m, "rempart_node_backup_last_success_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{m}");
    assert!(m.contains("rempart_vrrp_") && m.contains("rempart_repl_"), "one registry for every engine: {m}");

    // A planned switchover under load.
    let traffic = Traffic::start(&lab, &stack);
    traffic.wait_client_acks(5, Duration::from_secs(15)).unwrap();
    col.switchover(&lab, &stack, "main").unwrap();
    let moved = col.wait_phase(&stack, "backup", "serving", Duration::from_secs(20)).unwrap();
    let before = traffic.client_acks().len();
    traffic.wait_client_acks(before + 5, Duration::from_secs(15)).unwrap();
    let (client, probes) = traffic.finish();
    let present = Endpoint::Vip.list(&lab).expect("the VIP answers after the switchover");
    let lost: Vec<&str> = client.iter().filter(|a| !present.contains(&a.cn)).map(|a| a.cn.as_str()).collect();
    assert!(lost.is_empty(), "switchover lost acknowledged entries: {lost:?}");
    let empty = Vec::new();
    let two = two_writers(
        probes.get("main").unwrap_or(&empty),
        probes.get("backup").unwrap_or(&empty),
        Duration::from_millis(300),
    );
    assert!(two.is_empty(), "two writers during the switchover: {two:?}");
    println!(
        "switchover: backup serving {:.2} s after the command; {} entries acknowledged, 0 lost",
        moved.as_secs_f64(),
        client.len()
    );
    col.wait_phase(&stack, "main", "idle", Duration::from_secs(20)).unwrap();
    // The next primary continues the schedule: it has no backup recorded, but it read main's
    // archive from the repository, so its first run is due an hour after main's, not now.
    wait::until(Duration::from_secs(60), "backup read the repository", || {
        col.status_of(&stack, "backup").is_some_and(|s| s["backup"]["last_success_from"] == "repository")
    })
    .unwrap();
    let b = col.status_of(&stack, "backup").unwrap();
    let main_last = col.status_of(&stack, "main").unwrap()["backup"]["last_success_unix"].as_f64().unwrap();
    let learned = b["backup"]["last_success_unix"].as_f64().unwrap();
    // main records its success after prune, compact and check; the archive ended before.
    assert!(learned <= main_last && learned > main_last - 60.0, "{b}");
    assert!(b["backup"]["next_due_in_s"].as_f64().unwrap() > 3000.0, "{b}");
    assert_eq!(b["backup"]["running"], false, "{b}");
    assert_eq!(archives("backup-"), 0, "the next primary backed up at once");
    assert_eq!(archives("main-"), 1, "main runs no backup once it stepped down");

    // Maintenance on the standby: its primary's daemon dies, it does not take over.
    let (ok, out) = col.ctl(&stack, "main", &["maintenance", "on"]).unwrap();
    assert!(ok, "{out}");
    let (_, text) = col.ctl(&stack, "main", &["status"]).unwrap();
    assert!(text.contains("MAINTENANCE"), "{text}");
    assert_eq!(metric(&col.scrape(&lab, "main").unwrap(), "rempart_node_maintenance"), Some(1.0));
    col.kill9("backup").unwrap();
    // Longer than VRRP's Master_Down_Interval (3.4 s at 1 s adverts) plus the lease (3 s): the
    // window in which an automatic failover would have happened.
    let window = Instant::now() + Duration::from_secs(9);
    while Instant::now() < window {
        let s = col.status_of(&stack, "main").expect("main answers");
        assert_eq!(s["phase"], "idle", "main moved while in maintenance: {s}");
        assert_eq!(s["resources"][0]["role"], "Secondary", "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = col.ctl(&stack, "main", &["maintenance", "off"]).unwrap();
    assert!(ok, "{out}");
    col.wait_phase(&stack, "main", "serving", Duration::from_secs(20)).unwrap();
    let last = client.last().unwrap().cn.clone();
    wait::until(Duration::from_secs(10), "the last entry through the VIP", || Endpoint::Vip.has(&lab, &last)).unwrap();
    // Refused commands say why and exit 1.
    let (ok, out) = col.ctl(&stack, "backup", &["switchover"]).unwrap_or((true, String::new()));
    assert!(!ok, "switchover on a dead node must fail: {out}");
    drop(col);
    for n in ["backup", "main"] {
        stack.teardown(n);
    }
}

/// The repository's archives as the test reads them (the manifest, no lock: it is replaced
/// atomically): (name, start, end) in Unix seconds.
fn archive_list(stack: &Stack) -> Vec<(String, f64, f64)> {
    use dedupstore::backend::LocalBackend;
    use dedupstore::repo::{OpenOptions, Repository};
    let repo = Repository::open(
        std::sync::Arc::new(LocalBackend::new(NodeColumn::repository(stack))),
        &OpenOptions { passphrase: Some("lab backup passphrase".into()), keys_dir: None },
    )
    .unwrap();
    let secs = |ns: i64| ns as f64 / 1e9;
    repo.manifest()
        .unwrap()
        .archives
        .into_iter()
        .map(|e| {
            let end = repo.archive(&e.id).map_or(0.0, |m| secs(m.time_end));
            (e.name, secs(e.time), end)
        })
        .collect()
}

fn complete(list: &[(String, f64, f64)], prefix: &str) -> Vec<(String, f64, f64)> {
    list.iter().filter(|a| a.0.starts_with(prefix) && !a.0.contains(".checkpoint")).cloned().collect()
}

/// Issue 15, "backups follow the data", with a 20 s schedule:
/// (a) after a switchover, the new primary's first backup comes 20 s after the old primary's
///     last archive (read from the repository), not at once;
/// (b) a switchover while a backup runs cancels it cleanly: the run says cancelled (its
///     checkpoint named as such), the lock is released (the next primary's catch-up backup
///     succeeds), no complete archive comes from the cancelled run, and the repository passes
///     `check`.
#[test]
fn the_next_primary_continues_the_schedule_and_a_demotion_cancels_a_running_backup() {
    const EVERY: f64 = 20.0;
    let lab = rempart_lab::reference().unwrap();
    let mut stack = Stack::new(&lab).unwrap();
    stack.prepare(&lab).unwrap();
    let mut col = NodeColumn::new().unwrap();
    col.backup = true;
    col.backup_schedule = "20s".into();
    col.start(&lab, &mut stack).unwrap();
    let backup_of = |col: &NodeColumn, host: &str| col.status_of(&stack, host).map(|s| s["backup"].clone());
    let logs = |col: &NodeColumn| col.logs(&stack);

    // main serves with nothing recorded anywhere: it backs up at once.
    wait::until(Duration::from_secs(60), "main's first backup", || {
        backup_of(&col, "main").is_some_and(|b| b["last_success_unix"].is_number())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&col)));
    let list = archive_list(&stack);
    let main_first = complete(&list, "main-");
    assert_eq!(main_first.len(), 1, "{list:?}");
    let main_end = main_first[0].2;

    // (a) Switchover within the interval: backup reads main's archive and waits for its turn.
    col.switchover(&lab, &stack, "main").unwrap();
    col.wait_phase(&stack, "backup", "serving", Duration::from_secs(20)).unwrap();
    wait::until(Duration::from_secs(40), "backup read the repository", || {
        backup_of(&col, "backup").is_some_and(|b| b["last_success_from"] == "repository")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&col)));
    let b = backup_of(&col, "backup").unwrap();
    let learned = b["last_success_unix"].as_f64().unwrap();
    assert!((learned - main_end).abs() < 0.01, "learned {learned}, main's archive ended at {main_end}: {b}");
    wait::until(Duration::from_secs(90), "backup's first backup", || {
        backup_of(&col, "backup").is_some_and(|b| b["last_success_from"] == "local")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&col)));
    let list = archive_list(&stack);
    let first = complete(&list, "backup-");
    assert_eq!(first.len(), 1, "{list:?}");
    let (start, backup_end) = (first[0].1, first[0].2);
    assert!(
        start >= main_end + EVERY - 0.5 && start <= main_end + EVERY + 10.0,
        "backup's first archive started {:.2} s after main's ended (the schedule: {EVERY} s)",
        start - main_end
    );
    println!("the next primary's first backup started {:.2} s after the old primary's last ended", start - main_end);

    // (b) Make backup's next run slow (16 MB of fresh random data, zstd level 22), wait until
    // it runs, then switch over.
    let h = stack.host("backup");
    let yaml = NodeColumn::borgmatic(&stack, "backup").replace("storage:\n", "storage:\n    compression: zstd,22\n");
    std::fs::write(h.dir.join("borgmatic.yaml"), yaml).unwrap();
    let mp = h.mount_point();
    {
        use std::os::unix::fs::MetadataExt as _;
        let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(dev(&mp), dev(mp.parent().unwrap()), "the volume is mounted where the test writes");
    }
    let big = mp.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..64 {
        let data: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(big.join(format!("f{i:02}")), data).unwrap();
    }
    // Running, and in create: the repository's exclusive lock is taken (create holds it while
    // it chunks, compresses and stores; nothing else of this run takes it before).
    let lock = NodeColumn::repository(&stack).join("lock");
    wait::until(Duration::from_secs(60), "backup's second backup creating its archive", || {
        backup_of(&col, "backup").is_some_and(|b| b["running"] == true) && lock.exists()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&col)));
    let switched = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    col.switchover(&lab, &stack, "backup").unwrap();
    col.wait_phase(&stack, "main", "serving", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    let b = backup_of(&col, "backup").unwrap();
    assert_eq!(b["cancelled"], 1, "{b}");
    assert_eq!(b["running"], false, "{b}");
    let result = b["last_result"].as_str().unwrap_or_default().to_owned();
    assert!(result.starts_with("cancelled: leaving Primary"), "the run's report: {result:?}");
    // Stopped inside create: the items done so far are committed as a checkpoint, named so.
    let cp = result.split("checkpoint archive ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default();
    assert!(cp.starts_with("backup-") && cp.ends_with(".checkpoint"), "no checkpoint named in {result:?}");
    assert!(!lock.exists(), "the cancelled run left the repository locked");
    // The lock was released: main (nothing due by its own record's clock, but the repository's
    // newest is older than the interval) catches up at once and succeeds.
    wait::until(Duration::from_secs(120), "main's catch-up backup", || {
        backup_of(&col, "main").is_some_and(|b| {
            b["last_success_from"] == "local" && b["last_success_unix"].as_f64().is_some_and(|t| t > switched)
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&col)));
    let m = backup_of(&col, "main").unwrap();
    assert_eq!(m["last_result"], "success", "{m}");
    let list = archive_list(&stack);
    let mains = complete(&list, "main-");
    assert!(mains.iter().any(|a| a.1 >= switched), "main's catch-up archive: {list:?}");
    assert!(
        mains.iter().filter(|a| a.1 >= switched).all(|a| a.1 - switched < 30.0),
        "main's catch-up did not start at once: {list:?}"
    );

    // Everything stopped: the repository passes check, and no complete archive came from the
    // cancelled run (backup's only complete archive is its first).
    col.stop();
    let list = archive_list(&stack);
    let later: Vec<_> = complete(&list, "backup-").into_iter().filter(|a| a.1 > backup_end).collect();
    assert!(later.is_empty(), "a complete archive from the cancelled run: {later:?}");
    let out = std::process::Command::new(rempart_lab::steps::sibling_binary("rempart-backup").unwrap())
        .arg("check")
        .arg(NodeColumn::repository(&stack))
        .env("REMPART_PASSPHRASE", "lab backup passphrase")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(col);
    for n in ["backup", "main"] {
        stack.teardown(n);
    }
}
