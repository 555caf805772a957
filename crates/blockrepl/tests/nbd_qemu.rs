//! The NBD frontend against real clients: qemu-io, qemu-img and (as root) nbdfuse + loop + ext4.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use blockrepl::nbd::NbdServer;
use blockrepl::store::FileStore;

struct Served {
    _rt: tokio::runtime::Runtime,
    url: String,
}

fn serve(path: &Path) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = Arc::new(FileStore::open(path).unwrap());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(NbdServer::new("r0", store).serve_tcp(listener));
    Served { _rt: rt, url: format!("nbd://127.0.0.1:{port}/r0") }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn image(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

#[test]
fn qemu_io_write_read_patterns_flush_zero_discard() {
    let img = image(64 << 20);
    let s = serve(img.path());
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xa5 0 1M",
        "-c",
        "write -P 0x5a 3M 64k",
        "-c",
        "aio_write -P 0x11 8M 4k",
        "-c",
        "aio_write -P 0x22 9M 4k",
        "-c",
        "aio_flush",
        "-c",
        "flush",
        "-c",
        "write -z 512k 64k",
        "-c",
        "discard 3M 4k",
        "-c",
        "read -P 0xa5 0 512k",
        "-c",
        "read -P 0 512k 64k",
        "-c",
        "read -P 0 3M 4k",
        "-c",
        "read -P 0x5a 3076k 60k",
        "-c",
        "read -P 0x11 8M 4k",
        "-c",
        "read -P 0x22 9M 4k",
        &s.url,
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    // What qemu wrote is in the backing file.
    let bytes = std::fs::read(img.path()).unwrap();
    assert!(bytes[..512 << 10].iter().all(|b| *b == 0xa5));
    assert!(bytes[(8 << 20)..(8 << 20) + 4096].iter().all(|b| *b == 0x11));
}

#[test]
fn qemu_img_compare_and_info_and_list() {
    let src = image(16 << 20);
    std::fs::write(src.path(), (0..16u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let dst = image(16 << 20);
    let s = serve(dst.path());
    // qemu-img convert writes the whole image through us with many requests in flight.
    run(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        "-W",
        &src.path().to_string_lossy(),
        &s.url,
    ]));
    let out = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &src.path().to_string_lossy(),
        &s.url,
    ]));
    assert!(out.contains("Images are identical"), "{out}");
    let info = run(Command::new("nbdinfo").arg(&s.url));
    assert!(info.contains("export-size: 16777216"), "{info}");
    assert!(info.contains("can_flush: true"), "{info}");
    assert!(info.contains("can_fua: true"), "{info}");
    let list = run(Command::new("nbdinfo").args(["--list", &s.url]));
    assert!(list.contains("export=\"r0\""), "{list}");
}

#[test]
fn unknown_export_is_refused() {
    let img = image(1 << 20);
    let s = serve(img.path());
    let bad = s.url.replace("/r0", "/nope");
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 4k", &bad]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() || text.contains("export"), "{text}");
    assert!(!out.status.success());
}

#[test]
fn qemu_io_over_a_unix_socket() {
    let img = image(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("r0.sock");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let store = Arc::new(FileStore::open(img.path()).unwrap());
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&sock).unwrap()
    };
    rt.spawn(NbdServer::new("r0", store).serve_unix(listener));
    let url = format!("nbd+unix:///r0?socket={}", sock.display());
    let out =
        run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x42 4k 8k", "-c", "read -P 0x42 4k 8k", &url]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let bytes = std::fs::read(img.path()).unwrap();
    assert!(bytes[4096..12288].iter().all(|b| *b == 0x42));
}
