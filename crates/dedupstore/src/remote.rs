//! Remote repositories over SSH: locations, the wire protocol, the client [`SshBackend`] and the
//! server loop ([`serve`]) behind `rempart-backup serve`.
//!
//! ```text
//!  client (rempart-backup create …)                       server (forced command in authorized_keys)
//!  Repository ─► SshBackend ══ ssh stdin/stdout ══► rempart-backup serve --restrict-to-path P --append-only
//!                 │  requests are pipelined:                  │ Hello(path) checked against P
//!                 │  pack/index/archive writes do not wait    ▼
//!                 │  for their answer (up to a window);    LocalBackend(path)
//!                 │  anything else first drains them, so   append-only: no remove (except the lock),
//!                 │  the manifest is only sent once every  no overwrite of a different object,
//!                 ▼  object it names is acknowledged.      every manifest version kept in manifests/
//! ```
//!
//! Frames (all integers big-endian); a request:
//!
//! ```text
//!  0        4    5      6        8          8+n
//!  +--------+----+------+--------+----------+----------------------+
//!  | length | op | type | namelen| name     | payload              |
//!  +--------+----+------+--------+----------+----------------------+
//! ```
//!
//! and a response `| length | status | payload |`. `length` counts the bytes after itself. The
//! payload of `Hello` is the repository path, of `ReadPart` offset and length (u64 each), of
//! `Write`/`CreateNew` the object. Responses carry the data, a size (u64), a flag (u8), names
//! separated by `\n`, or an error message.
//!
//! Bulk bytes do not pass through the server's memory: a new pack's payload is spliced from the
//! input pipe into its temporary file, and a large read's answer from the file into the output
//! pipe (see [`serve`]); the client reads each answer straight into the buffer it returns.
//!
//! Why the server never needs trust in the client: it never sees keys or plaintext, and with
//! `--append-only` it refuses every removal and every overwrite of an existing object with
//! different bytes (objects are content-addressed, so a legitimate client never does that),
//! except the manifest, whose every version is kept so an operator can [`rollback`].

use crate::backend::{Backend, FileType, LocalBackend, Staged};
use crate::error::{Error, Result};
use nix::fcntl::SpliceFFlags;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Condvar, Mutex};

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepoLocation {
    /// A local directory.
    Local(PathBuf),
    /// A directory on another host, reached with ssh.
    Ssh {
        /// Login name, if given.
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// Port, if given.
        port: Option<u16>,
        /// Path on the server (relative paths are relative to the login directory).
        path: String,
    },
}

impl RepoLocation {
    /// Parses `ssh://[user@]host[:port]/path`, `[user@]host:path` (borg's forms) or a local path.
    pub fn parse(s: &str) -> Result<RepoLocation> {
        let bad = |why: &str| Error::InvalidArgument(format!("repository location {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (auth, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => return Err(bad("missing /path")),
            };
            let (user, hostport) = split_user(auth);
            let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                let (h, after) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
                    None if after.is_empty() => None,
                    None => return Err(bad("junk after ]")),
                };
                (h.to_string(), port)
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().map_err(|_| bad("bad port"))?)),
                    None => (hostport.to_string(), None),
                }
            };
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            // borg: ssh://host/./rel and ssh://host/~/rel are relative to the home directory.
            let path = path.strip_prefix("/./").or_else(|| path.strip_prefix("/~/")).unwrap_or(path);
            return Ok(RepoLocation::Ssh { user, host, port, path: path.to_string() });
        }
        if s.contains("://") {
            return Err(bad("unsupported scheme (use ssh:// or a path)"));
        }
        // scp-like `[user@]host:path`: a colon before any slash.
        if let Some(i) = s.find(':') {
            if !s[..i].contains('/') && i > 0 {
                let (user, host) = split_user(&s[..i]);
                let path = &s[i + 1..];
                if host.is_empty() || path.is_empty() {
                    return Err(bad("expected [user@]host:path"));
                }
                return Ok(RepoLocation::Ssh { user, host: host.to_string(), port: None, path: path.to_string() });
            }
        }
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(RepoLocation::Local(PathBuf::from(s)))
    }
}

fn split_user(auth: &str) -> (Option<String>, &str) {
    match auth.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, auth),
    }
}

/// Request operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Open a repository path (payload: path). Answer: flag append-only.
    Hello,
    /// Whether the repository exists.
    Exists,
    /// Create the repository directories.
    Create,
    /// List names of a type.
    List,
    /// Read a whole object.
    Read,
    /// Read a part (payload: offset, length).
    ReadPart,
    /// Object size.
    Size,
    /// Write (replace) an object (payload: data).
    Write,
    /// Create if absent (payload: data). Answer: flag created.
    CreateNew,
    /// Remove an object.
    Remove,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Hello => 1,
            Op::Exists => 2,
            Op::Create => 3,
            Op::List => 4,
            Op::Read => 5,
            Op::ReadPart => 6,
            Op::Size => 7,
            Op::Write => 8,
            Op::CreateNew => 9,
            Op::Remove => 10,
        }
    }
    fn from_code(c: u8) -> Option<Op> {
        Some(match c {
            1 => Op::Hello,
            2 => Op::Exists,
            3 => Op::Create,
            4 => Op::List,
            5 => Op::Read,
            6 => Op::ReadPart,
            7 => Op::Size,
            8 => Op::Write,
            9 => Op::CreateNew,
            10 => Op::Remove,
            _ => return None,
        })
    }
}

fn type_code(t: FileType) -> u8 {
    match t {
        FileType::Config => 1,
        FileType::Key => 2,
        FileType::Manifest => 3,
        FileType::Index => 4,
        FileType::Pack => 5,
        FileType::Archive => 6,
        FileType::Lock => 7,
    }
}

fn type_from_code(c: u8) -> Option<FileType> {
    Some(match c {
        1 => FileType::Config,
        2 => FileType::Key,
        3 => FileType::Manifest,
        4 => FileType::Index,
        5 => FileType::Pack,
        6 => FileType::Archive,
        7 => FileType::Lock,
        _ => return None,
    })
}

/// Largest frame accepted (a pack is at most 1 GiB plus headers).
pub const MAX_FRAME: usize = (1 << 30) + (1 << 20);

fn malformed(why: &str) -> Error {
    Error::InvalidArgument(format!("malformed frame: {why}"))
}

/// A request frame body (after the length field) over a byte buffer.
#[derive(Debug, Clone)]
pub struct RequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RequestPacket<T> {
    /// Wraps a buffer, checking the fixed header and the name fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < 4 {
            return Err(malformed("request shorter than its header"));
        }
        let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if b.len() < 4 + n {
            return Err(malformed("name runs past the frame"));
        }
        Ok(RequestPacket { buffer })
    }
    /// Operation code.
    pub fn op(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// Object type code.
    pub fn file_type(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// Object name bytes.
    pub fn name(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
        &b[4..4 + n]
    }
    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
        &b[4 + n..]
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRepr<'a> {
    /// Operation.
    pub op: Op,
    /// Object type (ignored by `Hello`, `Exists`, `Create`).
    pub file_type: FileType,
    /// Object name.
    pub name: &'a str,
    /// Payload (see the module docs).
    pub payload: &'a [u8],
}

impl<'a> RequestRepr<'a> {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &'a RequestPacket<&'a T>) -> Result<Self> {
        let op = Op::from_code(p.op()).ok_or_else(|| malformed("unknown operation"))?;
        let file_type = type_from_code(p.file_type()).ok_or_else(|| malformed("unknown object type"))?;
        let b: &'a [u8] = p.buffer.as_ref();
        let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let name = std::str::from_utf8(&b[4..4 + n]).map_err(|_| malformed("name is not UTF-8"))?;
        Ok(RequestRepr { op, file_type, name, payload: &b[4 + n..] })
    }
    /// Bytes of the body (without the length field).
    pub fn buffer_len(&self) -> usize {
        4 + self.name.len() + self.payload.len()
    }
    /// Emits the body into `buf` (exactly [`Self::buffer_len`] bytes).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.op.code();
        buf[1] = type_code(self.file_type);
        buf[2..4].copy_from_slice(&(self.name.len() as u16).to_be_bytes());
        buf[4..4 + self.name.len()].copy_from_slice(self.name.as_bytes());
        buf[4 + self.name.len()..self.buffer_len()].copy_from_slice(self.payload);
    }
    /// The whole frame, length field included.
    pub fn to_frame(&self) -> Vec<u8> {
        let n = self.buffer_len();
        let mut v = vec![0u8; 4 + n];
        v[..4].copy_from_slice(&(n as u32).to_be_bytes());
        self.emit(&mut v[4..]);
        v
    }
}

/// Response status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Success; payload is the answer.
    Ok,
    /// The object does not exist; payload is its description.
    NotFound,
    /// Refused by policy (append-only, restricted path); payload is the reason.
    Refused,
    /// Any other failure; payload is the message.
    Failed,
    /// `Create` on a non-empty directory.
    AlreadyExists,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotFound => 1,
            Status::Refused => 2,
            Status::Failed => 3,
            Status::AlreadyExists => 4,
        }
    }
    fn from_code(c: u8) -> Option<Status> {
        Some(match c {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Refused,
            3 => Status::Failed,
            4 => Status::AlreadyExists,
            _ => return None,
        })
    }
}

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseRepr<'a> {
    /// Status.
    pub status: Status,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> ResponseRepr<'a> {
    /// Parses a response body (after the length field).
    pub fn parse(b: &'a [u8]) -> Result<Self> {
        let (&s, payload) = b.split_first().ok_or_else(|| malformed("empty response"))?;
        let status = Status::from_code(s).ok_or_else(|| malformed("unknown status"))?;
        Ok(ResponseRepr { status, payload })
    }
    /// The whole frame, length field included.
    pub fn to_frame(&self) -> Vec<u8> {
        let n = 1 + self.payload.len();
        let mut v = Vec::with_capacity(4 + n);
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v.push(self.status.code());
        v.extend_from_slice(self.payload);
        v
    }
}

/// Reads one frame body; `Ok(None)` on a clean end of stream before a frame.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    if !read_full(r, &mut len)? {
        return Ok(None);
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
    }
    let mut buf = Vec::new();
    read_into(r, &mut buf, n)?;
    Ok(Some(buf))
}

/// Appends exactly `n` bytes from `r` to `buf`, reading straight into its spare capacity (no
/// zero-filling first: a restore reads hundreds of megabytes this way).
fn read_into(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let want = buf.len() + n;
    buf.reserve_exact(n);
    r.take(n as u64).read_to_end(buf)?;
    if buf.len() != want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// One response as the client keeps it: the status byte and the payload in its own buffer, so
/// the payload is handed on without another copy.
#[derive(Debug)]
struct Reply {
    status: u8,
    payload: Vec<u8>,
}

/// Reads one response; `Ok(None)` on a clean end of stream.
fn read_reply(r: &mut impl Read) -> std::io::Result<Option<Reply>> {
    let mut head = [0u8; 5];
    if !read_full(r, &mut head[..4])? {
        return Ok(None);
    }
    let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response length"));
    }
    r.read_exact(&mut head[4..])?;
    let mut payload = Vec::new();
    read_into(r, &mut payload, n - 1)?;
    Ok(Some(Reply { status: head[4], payload }))
}

fn conn_lost(loc: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: PathBuf::from(loc),
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, format!("connection to the server lost: {e}")),
    }
}

/// How the client reaches the server.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// The ssh command and its options (`REMPART_RSH`, `--rsh`), split on whitespace.
    pub rsh: String,
    /// The server's binary (`--remote-path`).
    pub remote_path: String,
    /// Most pipelined writes without an answer.
    pub window: usize,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions { rsh: "ssh".into(), remote_path: "rempart-backup".into(), window: 64 }
    }
}

/// The sending half: requests are numbered in the order they are written.
#[derive(Debug)]
struct Tx {
    tx: Option<BufWriter<ChildStdin>>,
    /// Number of the next request.
    next: u64,
    /// Pipelined writes whose answer is not checked yet: (request number, name).
    pending: VecDeque<(u64, String)>,
}

/// The receiving half: answers come back in request order; an answer read by one thread on
/// behalf of another waits in `stash` until its owner takes it.
#[derive(Debug)]
struct Rx {
    rx: BufReader<ChildStdout>,
    /// Number of the next answer on the stream.
    next: u64,
    stash: HashMap<u64, Reply>,
}

/// A repository on another host: `ssh … rempart-backup serve`, framed requests over the pipe.
///
/// Several threads may have requests in flight at once (the restore's fetch workers): each
/// sends under the `tx` lock, releases it, then waits under the `rx` lock, where whoever holds
/// it reads answers in order and stashes the others'. Lock order: `tx`, then `rx`, then the
/// leaves `child` and `broken`.
#[derive(Debug)]
pub struct SshBackend {
    location: String,
    append_only: bool,
    window: usize,
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    child: Mutex<Child>,
    /// First failure; every later call fails with it.
    broken: Mutex<Option<String>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SshBackend {
    /// Starts ssh and opens the repository path on the server.
    pub fn connect(loc: &RepoLocation, opts: &SshOptions) -> Result<SshBackend> {
        let RepoLocation::Ssh { user, host, port, path } = loc else {
            return Err(Error::InvalidArgument("not an ssh location".into()));
        };
        let mut words = opts.rsh.split_whitespace();
        let prog = words.next().ok_or_else(|| Error::InvalidArgument("empty ssh command".into()))?;
        let mut cmd = Command::new(prog);
        cmd.args(words);
        if let Some(p) = port {
            cmd.arg("-p").arg(p.to_string());
        }
        let dest = match user {
            Some(u) => format!("{u}@{host}"),
            None => host.clone(),
        };
        let location = match port {
            Some(p) => format!("ssh://{dest}:{p}{}", if path.starts_with('/') { "" } else { "/./" }) + path,
            None => format!("{dest}:{path}"),
        };
        cmd.arg(&dest).arg(&opts.remote_path).arg("serve");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child =
            cmd.spawn().map_err(|e| Error::InvalidArgument(format!("cannot start ssh command {prog:?}: {e}")))?;
        let (Some(tx), Some(rx)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::InvalidArgument("ssh pipes".into()));
        };
        // 1 MiB pipes to ssh instead of 64 KiB: fewer wake-ups of ssh and of us per pack (best
        // effort: an unprivileged user may be capped by /proc/sys/fs/pipe-max-size).
        for fd in [tx.as_raw_fd(), rx.as_raw_fd()] {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        let mut b = SshBackend {
            location,
            append_only: false,
            window: opts.window.max(1),
            tx: Mutex::new(Tx { tx: Some(BufWriter::with_capacity(1 << 20, tx)), next: 0, pending: VecDeque::new() }),
            rx: Mutex::new(Rx { rx: BufReader::with_capacity(1 << 18, rx), next: 0, stash: HashMap::new() }),
            child: Mutex::new(child),
            broken: Mutex::new(None),
        };
        let ans =
            b.call(RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: path.as_bytes() })?;
        b.append_only = ans.first() == Some(&1);
        Ok(b)
    }

    /// One `ReadPart` round trip, exactly `len` bytes.
    fn read_part_exact(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&offset.to_be_bytes());
        p[8..].copy_from_slice(&len.to_be_bytes());
        let v = self.call(RequestRepr { op: Op::ReadPart, file_type: t, name, payload: &p })?;
        if v.len() as u64 != len {
            return Err(Error::integrity(format!("{} {name}", self.location), "short read from the server"));
        }
        Ok(v)
    }

    /// Whether the server runs with `--append-only`.
    pub fn append_only(&self) -> bool {
        self.append_only
    }

    /// Marks the connection broken (the first reason sticks) and returns the error.
    fn fail(&self, e: impl std::fmt::Display) -> Error {
        // Reap ssh if it died, to report its exit status.
        let extra = match locked(&self.child).try_wait() {
            Ok(Some(st)) => format!(" (ssh exited with {st})"),
            _ => String::new(),
        };
        let msg = format!("{e}{extra}");
        locked(&self.broken).get_or_insert(msg.clone());
        conn_lost(&self.location, msg)
    }

    fn check_broken(&self) -> Result<()> {
        match locked(&self.broken).as_ref() {
            Some(b) => Err(conn_lost(&self.location, b.clone())),
            None => Ok(()),
        }
    }

    /// The answer to request `seq`.
    fn wait_for(&self, seq: u64) -> Result<Reply> {
        let mut r = locked(&self.rx);
        loop {
            if let Some(b) = r.stash.remove(&seq) {
                return Ok(b);
            }
            self.check_broken()?;
            if r.next > seq {
                return Err(self.fail(format!("answer {seq} lost")));
            }
            let body = match read_reply(&mut r.rx) {
                Ok(Some(b)) => b,
                Ok(None) => return Err(self.fail("end of stream")),
                Err(e) => return Err(self.fail(e)),
            };
            let n = r.next;
            r.next += 1;
            if n == seq {
                return Ok(body);
            }
            r.stash.insert(n, body);
        }
    }

    /// Interprets an answer.
    fn answer(&self, reply: Reply, what: &str) -> Result<Vec<u8>> {
        let status = Status::from_code(reply.status).ok_or_else(|| self.fail(malformed("unknown status")))?;
        let msg = || String::from_utf8_lossy(&reply.payload).into_owned();
        match status {
            Status::Ok => Ok(reply.payload),
            Status::NotFound => Err(Error::NotFound(format!("{}: {}", self.location, msg()))),
            Status::AlreadyExists => Err(Error::AlreadyExists(PathBuf::from(&self.location))),
            Status::Refused => {
                Err(Error::InvalidArgument(format!("{}: server refused {what}: {}", self.location, msg())))
            }
            _ => Err(Error::InvalidArgument(format!("{}: server error on {what}: {}", self.location, msg()))),
        }
    }

    /// Checks the answer of the oldest pipelined write; a failure sticks.
    fn check_oldest_write(&self, t: &mut Tx) -> Result<()> {
        let Some((seq, name)) = t.pending.pop_front() else { return Ok(()) };
        let r = self.wait_for(seq).and_then(|b| self.answer(b, &format!("write of {name}")));
        if let Err(e) = &r {
            locked(&self.broken).get_or_insert(e.to_string());
        }
        r.map(|_| ())
    }

    /// Reads every outstanding pipelined answer; the first failure is returned (and sticks).
    fn drain(&self, t: &mut Tx) -> Result<()> {
        if t.pending.is_empty() {
            return Ok(());
        }
        self.flush(t)?;
        let mut first = None;
        while !t.pending.is_empty() {
            if let Err(e) = self.check_oldest_write(t) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn flush(&self, t: &mut Tx) -> Result<()> {
        let r = t.tx.as_mut().ok_or_else(|| std::io::ErrorKind::BrokenPipe.into()).and_then(|w| w.flush());
        r.map_err(|e| self.fail(e))
    }

    /// Writes a request; returns its number.
    fn send(&self, t: &mut Tx, req: &RequestRepr<'_>) -> Result<u64> {
        self.check_broken()?;
        let n = req.buffer_len();
        let small = RequestRepr { payload: &[], ..req.clone() };
        let mut head = vec![0u8; small.buffer_len()];
        small.emit(&mut head);
        let r = t.tx.as_mut().ok_or_else(|| std::io::ErrorKind::BrokenPipe.into()).and_then(|w| {
            w.write_all(&(n as u32).to_be_bytes())?;
            w.write_all(&head)?;
            w.write_all(req.payload)
        });
        r.map_err(|e| self.fail(e))?;
        let seq = t.next;
        t.next += 1;
        Ok(seq)
    }

    /// One request: drains the pipelined writes, sends, flushes, then waits for the answer
    /// without holding the send side, so other threads' requests overlap with this one.
    fn call(&self, req: RequestRepr<'_>) -> Result<Vec<u8>> {
        let seq = {
            let mut t = locked(&self.tx);
            self.drain(&mut t)?;
            let seq = self.send(&mut t, &req)?;
            self.flush(&mut t)?;
            seq
        };
        let body = self.wait_for(seq)?;
        self.answer(body, &format!("{:?} {:?} {}", req.op, req.file_type, req.name))
    }
}

impl Drop for SshBackend {
    fn drop(&mut self) {
        {
            let t = &mut *locked(&self.tx);
            if self.flush(t).is_ok() {
                while !t.pending.is_empty() {
                    if self.check_oldest_write(t).is_err() && self.check_broken().is_err() {
                        break;
                    }
                }
            }
            // Closing stdin ends the server loop, then ssh exits.
            t.tx = None;
        }
        let _ = locked(&self.child).wait();
    }
}

fn flag(v: &[u8]) -> bool {
    v.first() == Some(&1)
}

impl Backend for SshBackend {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn exists(&self) -> Result<bool> {
        Ok(flag(&self.call(RequestRepr { op: Op::Exists, file_type: FileType::Config, name: "", payload: &[] })?))
    }
    fn create(&self) -> Result<()> {
        self.call(RequestRepr { op: Op::Create, file_type: FileType::Config, name: "", payload: &[] }).map(|_| ())
    }
    fn list(&self, t: FileType) -> Result<Vec<String>> {
        let v = self.call(RequestRepr { op: Op::List, file_type: t, name: "", payload: &[] })?;
        let s = String::from_utf8_lossy(&v);
        Ok(s.split('\n').filter(|n| !n.is_empty()).map(str::to_string).collect())
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.call(RequestRepr { op: Op::Read, file_type: t, name, payload: &[] })
    }
    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read_part_exact(t, name, offset, len)
    }
    fn size(&self, t: FileType, name: &str) -> Result<u64> {
        let v = self.call(RequestRepr { op: Op::Size, file_type: t, name, payload: &[] })?;
        let a: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::integrity("size answer", "not 8 bytes"))?;
        Ok(u64::from_be_bytes(a))
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        let req = RequestRepr { op: Op::Write, file_type: t, name, payload: data };
        match t {
            // Content-addressed objects are pipelined: nothing refers to them until the
            // manifest (or a later index) is written, and those are sent synchronously after
            // every pending answer has been read.
            FileType::Pack | FileType::Index | FileType::Archive => {
                let mut t = locked(&self.tx);
                let seq = self.send(&mut t, &req)?;
                t.pending.push_back((seq, name.to_string()));
                if t.pending.len() >= self.window {
                    self.flush(&mut t)?;
                    self.check_oldest_write(&mut t)?;
                }
                Ok(())
            }
            _ => self.call(req).map(|_| ()),
        }
    }
    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> Result<bool> {
        Ok(flag(&self.call(RequestRepr { op: Op::CreateNew, file_type: t, name, payload: data })?))
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.call(RequestRepr { op: Op::Remove, file_type: t, name, payload: &[] }).map(|_| ())
    }
    fn read_parts(
        &self,
        t: FileType,
        parts: &[(String, u64, u64)],
        each: &mut dyn FnMut(usize, Result<Vec<u8>>) -> bool,
    ) {
        let req = |i: usize| ReadReq { name: &parts[i].0, part: Some((parts[i].1, parts[i].2)) };
        self.pipelined_reads(t, parts.len(), &req, READ_WINDOW, each);
    }
    fn read_objects(&self, t: FileType, names: &[String], each: &mut dyn FnMut(usize, Result<Vec<u8>>) -> bool) {
        let req = |i: usize| ReadReq { name: &names[i], part: None };
        self.pipelined_reads(t, names.len(), &req, OBJECT_WINDOW, each);
    }
    fn pipelines_reads(&self) -> bool {
        true
    }
}

/// Most read requests one [`SshBackend::read_parts`] call keeps in flight. A restore asks for
/// runs of adjacent blobs only (~32 KiB on average on the bench corpus), so on a slow link it is
/// the byte bound below that keeps the link busy, not this count: 512 × 32 KiB covers 16 MiB.
const READ_WINDOW: usize = 512;
/// Most bytes those requests ask for (the link stays busy; memory stays bounded).
const READ_WINDOW_BYTES: u64 = 32 << 20;
/// Most whole-object reads ([`SshBackend::read_objects`]: `check`'s packs) in flight. Their
/// sizes are not known in advance, but the answers wait in the pipes and on the server's disk,
/// not in memory: only the one being handed on is held.
const OBJECT_WINDOW: usize = 8;

/// One read of a pipelined batch.
struct ReadReq<'a> {
    name: &'a str,
    /// `Some((offset, len))`: a `ReadPart` whose answer must be `len` bytes; `None`: a `Read`.
    part: Option<(u64, u64)>,
}

impl SshBackend {
    /// Read requests pipelined: up to `window` (and, for parts, [`READ_WINDOW_BYTES`]) are in
    /// flight while the oldest answer is read and handed on, so the link never idles for a
    /// round trip. Answers are matched to requests by their number (other threads' calls may
    /// interleave on the connection).
    fn pipelined_reads<'a>(
        &self,
        t: FileType,
        count: usize,
        req: &dyn Fn(usize) -> ReadReq<'a>,
        window: usize,
        each: &mut dyn FnMut(usize, Result<Vec<u8>>) -> bool,
    ) {
        let mut inflight: VecDeque<(u64, usize)> = VecDeque::new();
        let (mut bytes, mut next) = (0u64, 0usize);
        let mut send_err: Option<Error> = None;
        let weight = |i: usize| req(i).part.map_or(0, |p| p.1);
        let room = |inflight: &VecDeque<(u64, usize)>, bytes: u64, next: usize| {
            next < count
                && (inflight.is_empty()
                    || (inflight.len() < window && bytes.saturating_add(weight(next)) <= READ_WINDOW_BYTES))
        };
        loop {
            if send_err.is_none() && room(&inflight, bytes, next) {
                let mut tx = locked(&self.tx);
                let mut sent = self.drain(&mut tx);
                while sent.is_ok() && room(&inflight, bytes, next) {
                    let r = req(next);
                    let mut p = [0u8; 16];
                    let (op, payload): (Op, &[u8]) = match r.part {
                        Some((offset, len)) => {
                            p[..8].copy_from_slice(&offset.to_be_bytes());
                            p[8..].copy_from_slice(&len.to_be_bytes());
                            (Op::ReadPart, &p)
                        }
                        None => (Op::Read, &[]),
                    };
                    match self.send(&mut tx, &RequestRepr { op, file_type: t, name: r.name, payload }) {
                        Ok(seq) => {
                            inflight.push_back((seq, next));
                            bytes += weight(next);
                            next += 1;
                        }
                        Err(e) => sent = Err(e),
                    }
                }
                // the reads in flight still get their answers; read `next` gets this error
                send_err = sent.and_then(|()| self.flush(&mut tx)).err();
            }
            let Some((seq, i)) = inflight.pop_front() else {
                if let Some(e) = send_err {
                    each(next, Err(e));
                }
                return;
            };
            bytes -= weight(i);
            let r = req(i);
            let what = format!("{} {t:?} {}", if r.part.is_some() { "ReadPart" } else { "Read" }, r.name);
            let res = self.wait_for(seq).and_then(|b| self.answer(b, &what)).and_then(|v| match r.part {
                Some((_, len)) if v.len() as u64 != len => {
                    Err(Error::integrity(format!("{} {}", self.location, r.name), "short read from the server"))
                }
                _ => Ok(v),
            });
            if !each(i, res) {
                // read the answers still due, so none is left on the stream for another call
                for (seq, _) in inflight {
                    if self.wait_for(seq).is_err() {
                        break;
                    }
                }
                return;
            }
        }
    }
}

/// Server policy.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Only repositories under these directories (empty: any).
    pub restrict_to_paths: Vec<PathBuf>,
    /// Refuse removals and overwrites; keep manifest history.
    pub append_only: bool,
    /// Refuse writes that would make the repository larger than this many bytes.
    pub storage_quota: Option<u64>,
}

/// Parses a size like `500M`, `10G`, `2T` or plain bytes (powers of 1000, as borg).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1_000,
                'M' => 1_000_000,
                'G' => 1_000_000_000,
                'T' => 1_000_000_000_000,
                'P' => 1_000_000_000_000_000,
                _ => return Err(Error::InvalidArgument(format!("size {s:?}: unknown unit"))),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| Error::InvalidArgument(format!("size {s:?}")))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(Error::InvalidArgument(format!("size {s:?}")));
    }
    Ok((n * mult as f64) as u64)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    // The repository may not exist yet (init): resolve the nearest existing ancestor.
    let mut tail = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        match p.canonicalize() {
            Ok(c) => {
                let mut c = c;
                for t in tail.iter().rev() {
                    c.push(t);
                }
                return Ok(c);
            }
            Err(e) => {
                let name = p.file_name().map(|n| n.to_os_string());
                match (name, p.parent()) {
                    (Some(n), Some(parent)) => {
                        if n == ".." {
                            return Err(e);
                        }
                        tail.push(n);
                        p = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

/// Server-side state for one connection.
#[derive(Debug)]
pub struct Server {
    opts: ServeOptions,
    backend: Option<LocalBackend>,
    /// Bytes in the repository (measured at the first write when a quota is set).
    used: Option<u64>,
}

type Answer = (Status, Vec<u8>);

fn err_answer(e: Error) -> Answer {
    match e {
        Error::NotFound(m) => (Status::NotFound, m.into_bytes()),
        Error::AlreadyExists(p) => (Status::AlreadyExists, p.display().to_string().into_bytes()),
        e => (Status::Failed, e.to_string().into_bytes()),
    }
}

/// Directory (under the repository) where the append-only server keeps manifest versions.
pub const MANIFEST_HISTORY: &str = "manifests";

impl Server {
    /// A server with a policy.
    pub fn new(opts: ServeOptions) -> Server {
        Server { opts, backend: None, used: None }
    }

    /// Handles one request body; returns the response frame.
    pub fn handle(&mut self, body: &[u8]) -> Vec<u8> {
        let (status, payload) = match RequestPacket::new_checked(body).and_then(|p| {
            let p: RequestPacket<&[u8]> = p;
            RequestRepr::parse(&p).map(|r| self.dispatch(&r))
        }) {
            Ok(a) => a,
            Err(e) => (Status::Failed, e.to_string().into_bytes()),
        };
        ResponseRepr { status, payload: &payload }.to_frame()
    }

    fn refuse(why: String) -> Answer {
        (Status::Refused, why.into_bytes())
    }

    fn dispatch(&mut self, r: &RequestRepr<'_>) -> Answer {
        if r.op == Op::Hello {
            let path = PathBuf::from(String::from_utf8_lossy(r.payload).into_owned());
            let resolved = match resolve(&path) {
                Ok(p) => p,
                Err(e) => return (Status::Failed, format!("{}: {e}", path.display()).into_bytes()),
            };
            if !self.opts.restrict_to_paths.is_empty() {
                let ok = self
                    .opts
                    .restrict_to_paths
                    .iter()
                    .any(|rp| resolve(rp).map(|rp| resolved.starts_with(rp)).unwrap_or(false));
                if !ok {
                    return Self::refuse(format!(
                        "{} is outside the allowed paths (--restrict-to-path)",
                        path.display()
                    ));
                }
            }
            let b = LocalBackend::new(resolved);
            // what a killed earlier session (or client) was writing: never visible, but it
            // would count against the quota and never go away
            b.remove_stale_temps();
            self.backend = Some(b);
            // the quota is this repository's: measured again at its first write
            self.used = None;
            return (Status::Ok, vec![u8::from(self.opts.append_only)]);
        }
        let Some(b) = self.backend.clone() else {
            return (Status::Failed, b"no Hello yet".to_vec());
        };
        // A name is one path component: `../..` must not reach outside the repository.
        if !r.name.is_empty() {
            if let Err(e) = LocalBackend::check_name(r.name) {
                return err_answer(e);
            }
        }
        let res = match r.op {
            Op::Exists => b.exists().map(|x| vec![u8::from(x)]),
            Op::Create => b.create().map(|_| vec![]),
            Op::List => b.list(r.file_type).map(|v| v.join("\n").into_bytes()),
            Op::Read => b.read(r.file_type, r.name),
            Op::ReadPart => {
                let Ok(p) = <[u8; 16]>::try_from(r.payload) else {
                    return (Status::Failed, b"ReadPart payload must be 16 bytes".to_vec());
                };
                let off = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
                let len = u64::from_be_bytes(p[8..].try_into().unwrap_or_default());
                b.read_part(r.file_type, r.name, off, len)
            }
            Op::Size => b.size(r.file_type, r.name).map(|s| s.to_be_bytes().to_vec()),
            Op::Write | Op::CreateNew if self.over_quota(&b, r.payload.len()) => {
                return Self::refuse(format!(
                    "storage quota of {} bytes exceeded (--storage-quota)",
                    self.opts.storage_quota.unwrap_or(0)
                ));
            }
            Op::Write if self.opts.append_only => return Self::append_only_write(&b, r),
            Op::Write => b.write(r.file_type, r.name, r.payload).map(|_| vec![]),
            Op::CreateNew => b.create_new(r.file_type, r.name, r.payload).map(|x| vec![u8::from(x)]),
            Op::Remove => {
                if self.opts.append_only && r.file_type != FileType::Lock {
                    return Self::refuse(format!(
                        "append-only repository: removing {:?} {} is not allowed",
                        r.file_type, r.name
                    ));
                }
                b.remove(r.file_type, r.name).map(|_| vec![])
            }
            Op::Hello => unreachable_hello(),
        };
        match res {
            Ok(v) => (Status::Ok, v),
            Err(e) => err_answer(e),
        }
    }

    /// Whether writing `n` more bytes would exceed the quota (counts them if not).
    fn over_quota(&mut self, b: &LocalBackend, n: usize) -> bool {
        let Some(q) = self.opts.storage_quota else { return false };
        let used = *self.used.get_or_insert_with(|| dir_size(b.root()));
        if used.saturating_add(n as u64) > q {
            return true;
        }
        self.used = Some(used + n as u64);
        false
    }

    /// A write under the append-only policy: the manifest is replaced once its new version is
    /// in the history, a lock is replaced, anything else is only created, never replaced.
    fn append_only_write(b: &LocalBackend, r: &RequestRepr<'_>) -> Answer {
        let t = r.file_type;
        if t == FileType::Manifest {
            if let Err(e) = keep_manifest_version(b, r.payload) {
                return (Status::Failed, format!("manifest history: {e}").into_bytes());
            }
        }
        if matches!(t, FileType::Manifest | FileType::Lock) {
            return match b.write(t, r.name, r.payload) {
                Ok(()) => (Status::Ok, vec![]),
                Err(e) => err_answer(e),
            };
        }
        match b.read(t, r.name) {
            Ok(cur) if cur == r.payload => (Status::Ok, vec![]),
            Ok(_) => refuse_overwrite(t, r.name),
            Err(Error::NotFound(_)) => {
                let staged = b.stage(t, r.name).and_then(|mut st| {
                    let path = st.path().to_path_buf();
                    st.file().write_all(r.payload).map_err(|e| Error::io(path, e))?;
                    Ok(st)
                });
                match staged {
                    Ok(st) => commit_append_only(st, t, r.name),
                    Err(e) => err_answer(e),
                }
            }
            Err(e) => err_answer(e),
        }
    }
}

fn refuse_overwrite(t: FileType, name: &str) -> Answer {
    Server::refuse(format!("append-only repository: overwriting {t:?} {name} is not allowed"))
}

/// Makes a staged new object visible under `--append-only`, never replacing one: an object of
/// that name that appeared since the write was accepted (an earlier pipelined write of this
/// session still being committed then, another session's) is kept, and the write succeeds only if
/// it carries the same bytes.
fn commit_append_only(st: Staged, t: FileType, name: &str) -> Answer {
    match st.commit_new().and_then(|left| left.map_or(Ok(true), |st| st.same_as_existing())) {
        Ok(true) => (Status::Ok, vec![]),
        Ok(false) => refuse_overwrite(t, name),
        Err(e) => err_answer(e),
    }
}

/// Records `new` in the manifest history (`manifests/NNNNNNNN`) before it becomes current. If the
/// history does not end with the current manifest (one written on the server itself: a local
/// `prune`/`compact`, or before `--append-only` was set), the current one is recorded first, with
/// its time (which [`rollback`] goes by). Versions are never replaced: each is a complete, synced
/// file hard-linked to the next free number, which fails if a concurrent session took it.
fn keep_manifest_version(b: &LocalBackend, new: &[u8]) -> std::io::Result<()> {
    let dir = b.root().join(MANIFEST_HISTORY);
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&dir)?;
    let newest = || -> std::io::Result<Option<u64>> {
        let mut max = None;
        for e in std::fs::read_dir(&dir)? {
            if let Some(n) = e?.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                max = max.max(Some(n));
            }
        }
        Ok(max)
    };
    let add = |data: &[u8], time: Option<std::time::SystemTime>| -> std::io::Result<()> {
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let res = (|| {
            let f = std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().write(true).create_new(true),
                0o600,
            )
            .open(&tmp)?;
            // a live temporary file (see `LocalBackend::remove_stale_temps`)
            let mut f = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| std::io::Error::from(e))?;
            f.write_all(data)?;
            if let Some(t) = time {
                f.set_modified(t)?;
            }
            f.sync_all()?;
            loop {
                let seq = newest()?.unwrap_or(0) + 1;
                match std::fs::hard_link(&tmp, dir.join(format!("{seq:08}"))) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    r => return r,
                }
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        res
    };
    let current = b.path(FileType::Manifest, "manifest");
    match File::open(&current) {
        Ok(mut f) => {
            let mut cur = Vec::new();
            f.read_to_end(&mut cur)?;
            let last = match newest()? {
                Some(seq) => Some(std::fs::read(dir.join(format!("{seq:08}")))?),
                None => None,
            };
            if last.as_deref() != Some(&cur[..]) {
                add(&cur, Some(f.metadata()?.modified()?))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    add(new, None)?;
    File::open(&dir)?.sync_all()
}

fn unreachable_hello() -> Result<Vec<u8>> {
    Err(Error::InvalidArgument("Hello handled above".into()))
}

/// Whether a request may run off the reading thread: writes of packs and archive objects, which
/// nothing refers to until a later index or manifest write, and that write waits for them. An
/// index names packs, so it is not offloaded: it waits until every earlier pack is durable (a
/// connection cut after an index landed but before its packs did left `check` with missing packs).
/// A bad name (`../x`) is not offloaded: `dispatch` refuses it before any file is touched (the
/// append-only comparison would otherwise read a file outside the repository).
fn offloadable(r: &RequestRepr<'_>) -> bool {
    r.op == Op::Write
        && matches!(r.file_type, FileType::Pack | FileType::Archive)
        && LocalBackend::check_name(r.name).is_ok()
}

/// Writes one content-addressed object (a request body that [`offloadable`] accepted, already
/// counted against the quota); returns the response frame. Runs on a worker thread.
fn store(b: &LocalBackend, append_only: bool, body: &[u8]) -> Vec<u8> {
    let (status, payload) = match RequestPacket::new_checked(body).and_then(|p| {
        let p: RequestPacket<&[u8]> = p;
        RequestRepr::parse(&p).map(|r| {
            if append_only {
                return Server::append_only_write(b, &r);
            }
            match b.write(r.file_type, r.name, r.payload) {
                Ok(()) => (Status::Ok, vec![]),
                Err(e) => err_answer(e),
            }
        })
    }) {
        Ok(a) => a,
        Err(e) => (Status::Failed, e.to_string().into_bytes()),
    };
    ResponseRepr { status, payload: &payload }.to_frame()
}

/// Smallest payload the server moves between its pipes and files with splice(2) instead of
/// through a buffer: a pack (8 MiB) always, a lock or a small archive object never.
const SPLICE_MIN: u64 = 64 << 10;

impl Server {
    /// The backend to write this request with on a worker thread, if it can run there (counts
    /// it against the quota; a request over the quota stays on the reading thread, refused).
    fn offload(&mut self, body: &[u8]) -> Option<LocalBackend> {
        let p = RequestPacket::new_checked(body).ok()?;
        let r = RequestRepr::parse(&p).ok()?;
        let b = self.backend.clone()?;
        if !offloadable(&r) || self.over_quota(&b, r.payload.len()) {
            return None;
        }
        Some(b)
    }

    /// For an offloadable write whose payload (`len` bytes, not read yet) follows `head` on the
    /// input: the temporary file to receive it into (with the object's type and name), counted
    /// against the quota. An existing object is received the same way (never into memory): the
    /// commit replaces it, or under `--append-only` compares it ([`commit_append_only`]). `None`
    /// (a refusal, an error) reads the payload into memory and takes the usual path, which
    /// answers.
    fn stage(&mut self, head: &[u8], len: u64) -> Option<(Staged, FileType, String)> {
        let p = RequestPacket::new_checked(head).ok()?;
        let r = RequestRepr::parse(&p).ok()?;
        let b = self.backend.clone()?;
        if !offloadable(&r) {
            return None;
        }
        let st = b.stage(r.file_type, r.name).ok()?;
        if self.over_quota(&b, usize::try_from(len).ok()?) {
            return None;
        }
        Some((st, r.file_type, r.name.to_string()))
    }

    /// The answer to a request handled on the reading thread: a `Read` or `ReadPart` becomes a
    /// file range the output thread sends (a large one spliced onto the link, a small one through
    /// its buffer); anything else a frame.
    fn answer(&mut self, body: &[u8]) -> Out {
        self.file_answer(body).unwrap_or_else(|| Out::Frame(self.handle(body)))
    }

    fn file_answer(&self, body: &[u8]) -> Option<Out> {
        let p = RequestPacket::new_checked(body).ok()?;
        let r = RequestRepr::parse(&p).ok()?;
        let b = self.backend.as_ref()?;
        let (offset, len) = match r.op {
            Op::ReadPart => {
                let p = <[u8; 16]>::try_from(r.payload).ok()?;
                (u64::from_be_bytes(p[..8].try_into().ok()?), Some(u64::from_be_bytes(p[8..].try_into().ok()?)))
            }
            Op::Read if r.payload.is_empty() => (0, None),
            _ => return None,
        };
        // anything unusual (a bad name, a missing or short file) is answered by `handle`
        LocalBackend::check_name(r.name).ok()?;
        let file = File::open(b.path(r.file_type, r.name)).ok()?;
        let size = file.metadata().ok()?.len();
        let len = len.unwrap_or(size);
        if offset.checked_add(len)? > size || len >= MAX_FRAME as u64 {
            return None;
        }
        Some(Out::File { file, offset, len })
    }
}

/// Most answers waiting for the output thread; beyond it the reading thread and the writers wait.
const ANSWERS_QUEUED: usize = 256;

/// Work for the writer threads.
#[derive(Debug)]
enum Job {
    /// Store an object held in memory (its request body).
    Store(LocalBackend, Vec<u8>),
    /// Make an object already received into its temporary file durable and visible.
    Commit(Staged, FileType, String),
}

/// An answer for the output thread.
#[derive(Debug)]
enum Out {
    /// A whole response frame.
    Frame(Vec<u8>),
    /// An `Ok` response carrying `len` bytes of `file` from `offset`, spliced onto the output.
    File { file: File, offset: u64, len: u64 },
}

/// Offloaded writes not durable yet: a request that is not offloaded waits until there are none.
#[derive(Debug, Default)]
struct Busy {
    n: Mutex<u64>,
    idle: Condvar,
}

impl Busy {
    fn start(&self) {
        *locked(&self.n) += 1;
    }
    fn done(&self) {
        let mut n = locked(&self.n);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }
    fn wait_idle(&self) {
        let mut n = locked(&self.n);
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Serves requests from `input` until it ends (the client closed the connection).
///
/// ```text
///  input ─► reading thread ──(pack/archive writes)──► 2–4 writer threads: fsync, rename, fsync dir
///            │  a new pack's payload is spliced           │
///            │  from the input pipe into its file         │ answers
///            │  (no copy through this process)            ▼
///            └─ anything else, once every earlier ──► output thread ─► output, in request order;
///               write is durable (reads: a file            a read's bytes spliced from the file
///               range, not a buffer)
/// ```
///
/// The client pipelines object writes, so the reading thread hands each one to a small pool of
/// writers and goes on reading the link: receiving the next pack overlaps with storing the
/// previous ones, as the local case's upload threads do. Answers still go out in request order,
/// and any other request (a manifest write above all) first waits until every earlier write is
/// durable, so an acknowledged object is on disk before the manifest that names it is written.
/// The answers are written by their own thread, so each goes out as soon as it is ready, even
/// while no further request arrives. When the input or the output is not a pipe (a socket in
/// tests), splice(2) is refused and the same bytes go through a buffer.
pub fn serve<R, W>(opts: ServeOptions, input: &mut R, output: &mut W) -> Result<()>
where
    R: Read + AsFd,
    W: Write + AsFd + Send,
{
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4);
    let append_only = opts.append_only;
    let mut s = Server::new(opts);
    let (jtx, jrx) = crossbeam_channel::bounded::<(u64, Job)>(workers);
    // Bounded: a client that sends requests but never reads the answers stalls the server
    // (its pipes fill), it does not make it queue answers (or open files) without end.
    let (otx, orx) = crossbeam_channel::bounded::<(u64, Out)>(ANSWERS_QUEUED);
    let busy = Busy::default();
    std::thread::scope(|sc| {
        for _ in 0..workers {
            let (jrx, otx, busy) = (jrx.clone(), otx.clone(), &busy);
            sc.spawn(move || {
                for (seq, job) in jrx {
                    let frame = match job {
                        Job::Store(b, body) => store(&b, append_only, &body),
                        Job::Commit(st, t, name) => {
                            let (status, payload) = match append_only {
                                true => commit_append_only(st, t, &name),
                                false => st.commit().map_or_else(err_answer, |()| (Status::Ok, vec![])),
                            };
                            ResponseRepr { status, payload: &payload }.to_frame()
                        }
                    };
                    busy.done();
                    // a dead output ends the reading thread; keep draining the jobs meanwhile
                    let _ = otx.send((seq, Out::Frame(frame)));
                }
            });
        }
        drop(jrx);
        let writer = sc.spawn(move || write_answers(output, &orx));
        let r = read_requests(&mut s, input, &jtx, &otx, &busy);
        drop((jtx, otx));
        let w = writer.join().unwrap_or_else(|_| Err(worker_lost()));
        // the output's error first: when it died, the reading thread only saw the answers'
        // channel close (`worker_lost`)
        w.and(r)
    })
}

fn worker_lost() -> Error {
    Error::InvalidArgument("server worker threads ended".into())
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before its first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Why moving a payload from the input into a file stopped.
#[derive(Debug)]
enum CopyError {
    /// The input failed or ended: the connection is gone.
    Input(std::io::Error),
    /// The file could not be written; this many payload bytes are still on the input.
    Output(std::io::Error, u64),
}

/// Moves `len` bytes from `input` to the end of `file`: splice(2) when `input` is a pipe (the
/// bytes go from the pipe's pages to the page cache, never through this process), a buffer
/// otherwise.
fn copy_in(input: &mut (impl Read + AsFd), file: &mut File, len: u64) -> std::result::Result<(), CopyError> {
    use nix::errno::Errno;
    let mut left = len;
    let mut spliced = true;
    let mut buf = Vec::new();
    while left > 0 {
        if spliced {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(1 << 30);
            match nix::fcntl::splice(input.as_fd(), None, file.as_fd(), None, want, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(CopyError::Input(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => left -= n as u64,
                Err(Errno::EINTR) => {}
                // not a pipe (a socket in tests) or a file system without splice: nothing moved
                Err(Errno::EINVAL) => spliced = false,
                Err(e) => return Err(CopyError::Output(e.into(), left)),
            }
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => return Err(CopyError::Input(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Input(e)),
        };
        left -= n as u64;
        if let Err(e) = file.write_all(&buf[..n]) {
            return Err(CopyError::Output(e, left));
        }
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `offset` to `out`: splice(2) when `out` is a pipe (page
/// cache pages go into the pipe by reference), `pread` and `write` otherwise.
fn copy_out(file: &File, offset: u64, len: u64, out: &mut (impl Write + AsFd)) -> std::io::Result<()> {
    use nix::errno::Errno;
    use std::os::unix::fs::FileExt;
    let end = offset.saturating_add(len);
    let mut at = offset;
    let mut spliced = true;
    let mut buf = Vec::new();
    let shrank = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "object shrank while being sent");
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        if spliced {
            let mut off = i64::try_from(at).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
            match nix::fcntl::splice(file.as_fd(), Some(&mut off), out.as_fd(), None, want, flags) {
                Ok(0) => return Err(shrank()),
                Ok(n) => at += n as u64,
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL) => spliced = false,
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        let n = file.read_at(&mut buf[..want.min(1 << 20)], at)?;
        if n == 0 {
            return Err(shrank());
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// The reading thread: frames from `input`, dispatched (see [`serve`]); each request's answer
/// goes to the output thread numbered in request order.
fn read_requests<R: Read + AsFd>(
    s: &mut Server,
    input: &mut R,
    jobs: &crossbeam_channel::Sender<(u64, Job)>,
    answers: &crossbeam_channel::Sender<(u64, Out)>,
    busy: &Busy,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("<client>", e);
    let send = |seq: u64, o: Out| answers.send((seq, o)).map_err(|_| worker_lost());
    for seq in 0u64.. {
        let mut len = [0u8; 4];
        if !read_full(input, &mut len).map_err(io)? {
            break;
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large")));
        }
        // The fixed header and the name first: a new pack's payload goes straight to its file.
        let mut body = vec![0u8; n.min(4)];
        input.read_exact(&mut body).map_err(io)?;
        if n >= 4 {
            let head = (4 + usize::from(u16::from_be_bytes([body[2], body[3]]))).min(n);
            body.resize(head, 0);
            input.read_exact(&mut body[4..]).map_err(io)?;
        }
        let payload = (n - body.len()) as u64;
        if payload >= SPLICE_MIN {
            if let Some((mut st, t, name)) = s.stage(&body, payload) {
                match copy_in(input, st.file(), payload) {
                    Ok(()) => {
                        busy.start();
                        jobs.send((seq, Job::Commit(st, t, name))).map_err(|_| worker_lost())?;
                    }
                    Err(CopyError::Input(e)) => return Err(io(e)), // `st` removes its file
                    Err(CopyError::Output(e, left)) => {
                        let e = Error::io(st.path(), e);
                        drop(st);
                        let skipped = std::io::copy(&mut input.take(left), &mut std::io::sink()).map_err(io)?;
                        if skipped != left {
                            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                        let (status, msg) = err_answer(e);
                        send(seq, Out::Frame(ResponseRepr { status, payload: &msg }.to_frame()))?;
                    }
                }
                continue;
            }
        }
        // The rest of the body into memory (no zero-filling of the buffer first).
        body.reserve_exact(n - body.len());
        input.take(payload).read_to_end(&mut body).map_err(io)?;
        if body.len() != n {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if let Some(b) = s.offload(&body) {
            busy.start();
            jobs.send((seq, Job::Store(b, body))).map_err(|_| worker_lost())?;
        } else {
            busy.wait_idle();
            send(seq, s.answer(&body))?;
        }
    }
    Ok(())
}

/// The output thread: answers in request order, flushed whenever none is ready.
fn write_answers<W: Write + AsFd>(output: &mut W, answers: &crossbeam_channel::Receiver<(u64, Out)>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| Error::io("<client>", e);
    let mut w = BufWriter::with_capacity(1 << 18, output);
    let mut ready: HashMap<u64, Out> = HashMap::new();
    let mut next = 0u64;
    let mut scratch = Vec::new();
    // the head of an `Ok` answer carrying `len` bytes
    let ok_head = |len: u64| {
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&((len + 1) as u32).to_be_bytes());
        head[4] = Status::Ok.code();
        head
    };
    while let Ok((k, o)) = answers.recv() {
        ready.insert(k, o);
        while let Some(o) = ready.remove(&next) {
            match o {
                Out::Frame(f) => w.write_all(&f).map_err(io)?,
                Out::File { file, offset, len } if len < SPLICE_MIN => {
                    // small (most of a restore's reads): through the buffer with the answers
                    // around it, one write to the pipe for many
                    scratch.resize(len as usize, 0);
                    match file.read_exact_at(&mut scratch, offset) {
                        Ok(()) => {
                            w.write_all(&ok_head(len)).map_err(io)?;
                            w.write_all(&scratch).map_err(io)?;
                        }
                        Err(e) => {
                            let msg = format!("reading {len} bytes at {offset}: {e}");
                            w.write_all(&ResponseRepr { status: Status::Failed, payload: msg.as_bytes() }.to_frame())
                                .map_err(io)?;
                        }
                    }
                }
                Out::File { file, offset, len } => {
                    w.write_all(&ok_head(len)).map_err(io)?;
                    w.flush().map_err(io)?;
                    copy_out(&file, offset, len, w.get_mut()).map_err(io)?;
                }
            }
            next += 1;
            while let Ok((k, o)) = answers.try_recv() {
                ready.insert(k, o);
            }
        }
        if answers.is_empty() {
            w.flush().map_err(io)?;
        }
    }
    w.flush().map_err(io)
}

/// Grows the pipes on stdin and stdout (sshd's, when serving) to 1 MiB, best effort: fewer
/// wake-ups of sshd and of the server per pack than with the default 64 KiB.
pub fn widen_stdio_pipes() {
    for fd in [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd()] {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

/// Manifest versions kept by an append-only server, oldest first: (sequence, path).
pub fn manifest_versions(repo: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = repo.join(MANIFEST_HISTORY);
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut v: Vec<(u64, PathBuf)> =
        rd.filter_map(|e| e.ok()).filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path()))).collect();
    v.sort();
    Ok(v)
}

/// Operator-side rollback (run on the server, with the client locked out): makes manifest
/// version `seq` current again, and moves index files written after it into
/// `rolled-back/index/` (so a later compaction's superseding index no longer hides the chunks of
/// the restored archives). Packs and archive objects are never removed in append-only mode, so
/// everything that version names is present. Returns the number of index files moved aside.
pub fn rollback(repo: &Path, seq: u64) -> Result<usize> {
    let versions = manifest_versions(repo)?;
    let (_, p) = versions
        .iter()
        .find(|(s, _)| *s == seq)
        .ok_or_else(|| Error::InvalidArgument(format!("no manifest version {seq}")))?;
    let since = std::fs::metadata(p).and_then(|m| m.modified()).map_err(|e| Error::io(p, e))?;
    let b = LocalBackend::new(repo);
    let aside = repo.join("rolled-back").join("index");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&aside)
        .map_err(|e| Error::io(&aside, e))?;
    let mut moved = 0;
    for n in b.list(FileType::Index)? {
        let ip = b.path(FileType::Index, &n);
        let m = std::fs::metadata(&ip).and_then(|m| m.modified()).map_err(|e| Error::io(&ip, e))?;
        if m > since {
            std::fs::rename(&ip, aside.join(&n)).map_err(|e| Error::io(&ip, e))?;
            moved += 1;
        }
    }
    let data = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    b.write(FileType::Manifest, "manifest", &data)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> RepoLocation {
        RepoLocation::Ssh { user: user.map(str::to_string), host: host.into(), port, path: path.into() }
    }

    #[test]
    fn locations() {
        let p = RepoLocation::parse;
        assert_eq!(p("ssh://borg@10.0.0.1:2222/srv/r").unwrap(), ssh(Some("borg"), "10.0.0.1", Some(2222), "/srv/r"));
        assert_eq!(p("ssh://host/srv/r").unwrap(), ssh(None, "host", None, "/srv/r"));
        assert_eq!(p("ssh://u@[::1]:22/x").unwrap(), ssh(Some("u"), "::1", Some(22), "/x"));
        assert_eq!(p("ssh://u@h/./rel").unwrap(), ssh(Some("u"), "h", None, "rel"));
        assert_eq!(
            p("borguser@192.168.50.20:/srv/borg/mediaschool").unwrap(),
            ssh(Some("borguser"), "192.168.50.20", None, "/srv/borg/mediaschool")
        );
        assert_eq!(p("host:repo").unwrap(), ssh(None, "host", None, "repo"));
        assert_eq!(p("/srv/repo").unwrap(), RepoLocation::Local("/srv/repo".into()));
        assert_eq!(p("./a:b").unwrap(), RepoLocation::Local("./a:b".into()));
        assert!(p("ssh://host").is_err());
        assert!(p("ssh://h:99999/x").is_err());
        assert!(p("http://h/x").is_err());
        assert!(p("h:").is_err());
    }

    #[test]
    fn request_golden() {
        let r = RequestRepr { op: Op::ReadPart, file_type: FileType::Pack, name: "ab", payload: &[0, 1] };
        let mut buf = vec![0xa5u8; r.buffer_len() + 2];
        r.emit(&mut buf);
        assert_eq!(buf, [6, 5, 0, 2, b'a', b'b', 0, 1, 0xa5, 0xa5]);
        assert_eq!(r.to_frame(), [0, 0, 0, 8, 6, 5, 0, 2, b'a', b'b', 0, 1]);
        let p = RequestPacket::new_checked(&buf[..8]).unwrap();
        assert_eq!(RequestRepr::parse(&p).unwrap(), r);
        assert!(RequestPacket::new_checked(&buf[..3]).is_err());
        assert!(RequestPacket::new_checked(&[6u8, 5, 0, 9, b'a'][..]).is_err());
        let bad = [99u8, 5, 0, 0];
        assert!(RequestRepr::parse(&RequestPacket::new_checked(&bad[..]).unwrap()).is_err());
    }

    #[test]
    fn response_golden() {
        let r = ResponseRepr { status: Status::Refused, payload: b"no" };
        assert_eq!(r.to_frame(), [0, 0, 0, 3, 2, b'n', b'o']);
        assert_eq!(ResponseRepr::parse(&[2, b'n', b'o']).unwrap(), r);
        assert!(ResponseRepr::parse(&[]).is_err());
        assert!(ResponseRepr::parse(&[77]).is_err());
    }

    fn ask(s: &mut Server, r: RequestRepr<'_>) -> (Status, Vec<u8>) {
        let f = r.to_frame();
        let a = s.handle(&f[4..]);
        let rr = ResponseRepr::parse(&a[4..]).unwrap();
        (rr.status, rr.payload.to_vec())
    }

    #[test]
    fn server_restricts_paths_and_enforces_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let opts = ServeOptions { restrict_to_paths: vec![allowed.clone()], append_only: true, storage_quota: None };
        let mut s = Server::new(opts);
        let hello = |p: &Path| format!("{}", p.display()).into_bytes();
        let outside = hello(&dir.path().join("other"));
        let (st, _) =
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &outside });
        assert_eq!(st, Status::Refused);
        let sneaky = hello(&allowed.join("../other"));
        let (st, _) =
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &sneaky });
        assert_eq!(st, Status::Refused);
        let inside = hello(&allowed.join("repo"));
        let (st, v) =
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &inside });
        assert_eq!((st, v), (Status::Ok, vec![1]));
        let w = |t, name, payload| RequestRepr { op: Op::Write, file_type: t, name, payload };
        assert_eq!(
            ask(&mut s, RequestRepr { op: Op::Create, file_type: FileType::Config, name: "", payload: &[] }).0,
            Status::Ok
        );
        assert_eq!(ask(&mut s, w(FileType::Pack, "aa01", b"x")).0, Status::Ok);
        assert_eq!(ask(&mut s, w(FileType::Pack, "aa01", b"x")).0, Status::Ok, "identical rewrite is harmless");
        assert_eq!(ask(&mut s, w(FileType::Pack, "aa01", b"y")).0, Status::Refused);
        let rm = |t, name| RequestRepr { op: Op::Remove, file_type: t, name, payload: &[] };
        assert_eq!(ask(&mut s, rm(FileType::Pack, "aa01")).0, Status::Refused);
        assert_eq!(ask(&mut s, rm(FileType::Archive, "bb")).0, Status::Refused);
        assert_eq!(ask(&mut s, rm(FileType::Lock, "lock")).0, Status::Ok);
        assert_eq!(ask(&mut s, w(FileType::Manifest, "manifest", b"m1")).0, Status::Ok);
        assert_eq!(ask(&mut s, w(FileType::Manifest, "manifest", b"m2")).0, Status::Ok);
        let repo = allowed.join("repo");
        assert_eq!(std::fs::read(repo.join("data/aa/aa01")).unwrap(), b"x");
        let versions = manifest_versions(&repo).unwrap();
        assert_eq!(versions.iter().map(|v| v.0).collect::<Vec<_>>(), vec![1, 2]);
        rollback(&repo, 1).unwrap();
        assert_eq!(std::fs::read(repo.join("manifest")).unwrap(), b"m1");
        // garbage never panics
        let a = s.handle(&[1]);
        assert_eq!(ResponseRepr::parse(&a[4..]).unwrap().status, Status::Failed);
    }

    #[test]
    fn parsers_and_server_never_panic_on_random_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..5000 {
            let n = rng.gen_range(0..40);
            let mut data = vec![0u8; n];
            rng.fill(&mut data[..]);
            if n > 0 && rng.gen_bool(0.5) {
                data[0] = rng.gen_range(1..=10); // a valid op, so deeper paths run
            }
            // same calls as fuzz/fuzz_targets/backup_remote_frame.rs
            if let Ok(p) = RequestPacket::new_checked(&data[..]) {
                let _ = RequestRepr::parse(&p);
            }
            let _ = ResponseRepr::parse(&data);
            let _ = RepoLocation::parse(&String::from_utf8_lossy(&data));
            let opts = ServeOptions {
                restrict_to_paths: vec!["/nonexistent-fuzz-root".into()],
                append_only: true,
                storage_quota: Some(1),
            };
            let a = Server::new(opts).handle(&data);
            assert!(ResponseRepr::parse(&a[4..]).is_ok());
        }
    }

    #[test]
    fn serve_answers_pipelined_writes_while_no_further_request_comes() {
        use std::os::unix::net::UnixStream;
        let dir = tempfile::tempdir().unwrap();
        let (mut client_tx, mut server_rx) = UnixStream::pair().unwrap();
        let (mut server_tx, client_rx) = UnixStream::pair().unwrap();
        // A server that only answered writes when the next request arrived would hang here:
        // fail after 30 s instead.
        client_rx.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let server = std::thread::spawn(move || serve(ServeOptions::default(), &mut server_rx, &mut server_tx));
        let path = dir.path().join("r").display().to_string().into_bytes();
        let cfg = |op, payload| RequestRepr { op, file_type: FileType::Config, name: "", payload };
        let names: Vec<String> = (0..6).map(|i| format!("aa{i:02}")).collect();
        let mut frames = vec![cfg(Op::Hello, &path).to_frame(), cfg(Op::Create, &[]).to_frame()];
        for n in &names {
            frames.push(
                RequestRepr { op: Op::Write, file_type: FileType::Pack, name: n, payload: &[7u8; 100_000] }.to_frame(),
            );
        }
        for f in &frames {
            client_tx.write_all(f).unwrap();
        }
        let mut rx = BufReader::new(client_rx);
        for _ in 0..frames.len() {
            let body = read_frame(&mut rx).unwrap().unwrap();
            assert_eq!(ResponseRepr::parse(&body).unwrap().status, Status::Ok);
        }
        // Acknowledged means stored.
        for n in &names {
            assert_eq!(std::fs::read(dir.path().join("r/data/aa").join(n)).unwrap().len(), 100_000);
        }
        let m = RequestRepr { op: Op::Write, file_type: FileType::Manifest, name: "manifest", payload: b"m" };
        client_tx.write_all(&m.to_frame()).unwrap();
        let body = read_frame(&mut rx).unwrap().unwrap();
        assert_eq!(ResponseRepr::parse(&body).unwrap().status, Status::Ok);
        drop(client_tx);
        server.join().unwrap().unwrap();
        assert_eq!(std::fs::read(dir.path().join("r/manifest")).unwrap(), b"m");
    }

    /// `serve` between two real pipes (as under sshd): requests in, answers out.
    struct PipeServer {
        to_server: Option<File>,
        from_server: BufReader<File>,
        server: Option<std::thread::JoinHandle<Result<()>>>,
    }

    impl PipeServer {
        fn start(opts: ServeOptions) -> PipeServer {
            let (in_r, in_w) = nix::unistd::pipe().unwrap();
            let (out_r, out_w) = nix::unistd::pipe().unwrap();
            let server = std::thread::spawn(move || {
                let (mut i, mut o) = (File::from(in_r), File::from(out_w));
                serve(opts, &mut i, &mut o)
            });
            PipeServer {
                to_server: Some(File::from(in_w)),
                from_server: BufReader::new(File::from(out_r)),
                server: Some(server),
            }
        }
        /// A server whose session has opened a newly created repository at `repo`.
        fn with_new_repo(repo: &Path) -> PipeServer {
            pipe_server_with(ServeOptions::default(), repo)
        }
        fn send(&mut self, r: RequestRepr<'_>) {
            self.to_server.as_mut().unwrap().write_all(&r.to_frame()).unwrap();
        }
        fn answer(&mut self) -> (Status, Vec<u8>) {
            let body = read_frame(&mut self.from_server).unwrap().unwrap();
            let r = ResponseRepr::parse(&body).unwrap();
            (r.status, r.payload.to_vec())
        }
        fn ask(&mut self, r: RequestRepr<'_>) -> (Status, Vec<u8>) {
            self.send(r);
            self.answer()
        }
        /// Closes the input; the server's result.
        fn finish(&mut self) -> Result<()> {
            self.to_server = None;
            self.server.take().unwrap().join().unwrap()
        }
    }

    fn hidden_or_all(dir: &Path) -> (Vec<String>, Vec<String>) {
        let mut all: Vec<String> = walk(dir);
        all.sort();
        let hidden = all.iter().filter(|n| n.rsplit('/').next().is_some_and(|f| f.starts_with('.'))).cloned().collect();
        (hidden, all)
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                v.extend(walk(&e.path()));
            } else {
                v.push(e.path().display().to_string());
            }
        }
        v
    }

    #[test]
    fn spliced_writes_and_reads_through_pipes_are_byte_identical() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let mut p = PipeServer::with_new_repo(&dir.path().join("r"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // sizes around the splice threshold, a pipe's worth, and a pack's
        let sizes = [1000, SPLICE_MIN as usize - 1, SPLICE_MIN as usize, 65_537, 1 << 20, (8 << 20) + 13];
        let objects: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut v = vec![0u8; n];
                rng.fill(&mut v[..]);
                (format!("{i:02x}{:062x}", rng.gen::<u64>()), v)
            })
            .collect();
        // pipelined, as the client sends them; answers read on another thread (the pipes are
        // smaller than what is in flight)
        let mut rx = p.from_server.get_ref().try_clone().map(BufReader::new).unwrap();
        let n = objects.len();
        let reader = std::thread::spawn(move || {
            (0..n).map(|_| ResponseRepr::parse(&read_frame(&mut rx).unwrap().unwrap()).unwrap().status).collect()
        });
        for (name, v) in &objects {
            p.send(RequestRepr { op: Op::Write, file_type: FileType::Pack, name, payload: v });
        }
        let statuses: Vec<Status> = reader.join().unwrap();
        assert_eq!(statuses, vec![Status::Ok; n]);
        let repo = dir.path().join("r");
        for (name, v) in &objects {
            assert!(std::fs::read(repo.join("data").join(&name[..2]).join(name)).unwrap() == *v, "{name} differs");
        }
        // whole and partial reads come back identical (the large ones spliced from the files)
        for (name, v) in &objects {
            let (st, got) = p.ask(RequestRepr { op: Op::Read, file_type: FileType::Pack, name, payload: &[] });
            assert_eq!(st, Status::Ok);
            assert!(got == *v, "Read {name}");
            let (off, len) = (v.len() as u64 / 3, v.len() as u64 / 2);
            let mut q = [0u8; 16];
            q[..8].copy_from_slice(&off.to_be_bytes());
            q[8..].copy_from_slice(&len.to_be_bytes());
            let (st, got) = p.ask(RequestRepr { op: Op::ReadPart, file_type: FileType::Pack, name, payload: &q });
            assert_eq!(st, Status::Ok);
            assert!(got[..] == v[off as usize..(off + len) as usize], "ReadPart {name}");
            // past the end: an error, not a short answer
            q[8..].copy_from_slice(&(len * 2).to_be_bytes());
            let (st, _) = p.ask(RequestRepr { op: Op::ReadPart, file_type: FileType::Pack, name, payload: &q });
            assert_eq!(st, Status::Failed);
        }
        p.finish().unwrap();
        assert!(hidden_or_all(&repo).0.is_empty(), "no temporary file left");
    }

    #[test]
    fn a_pack_cut_short_leaves_no_partial_object() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PipeServer::with_new_repo(&dir.path().join("r"));
        let whole = vec![0x5au8; 4 << 20];
        let frame = RequestRepr { op: Op::Write, file_type: FileType::Pack, name: "ab01", payload: &whole }.to_frame();
        // the connection dies after 1 MiB of the 4 MiB payload
        p.to_server.as_mut().unwrap().write_all(&frame[..(1 << 20) + 40]).unwrap();
        let r = p.finish();
        assert!(r.is_err(), "a truncated frame is an error");
        let repo = dir.path().join("r");
        let (hidden, all) = hidden_or_all(&repo);
        assert!(hidden.is_empty(), "temporary file left: {hidden:?}");
        assert!(!all.iter().any(|f| f.ends_with("ab01")), "partial object visible: {all:?}");
    }

    #[test]
    fn names_cannot_leave_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        let mut s = Server::new(ServeOptions::default());
        let path = dir.path().join("a/r").display().to_string().into_bytes();
        assert_eq!(
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &path }).0,
            Status::Ok
        );
        assert_eq!(
            ask(&mut s, RequestRepr { op: Op::Create, file_type: FileType::Config, name: "", payload: &[] }).0,
            Status::Ok
        );
        for name in ["../../../secret", "..", ".hidden", "a/b"] {
            for op in [Op::Read, Op::Size, Op::Remove, Op::Write] {
                let (st, _) = ask(&mut s, RequestRepr { op, file_type: FileType::Key, name, payload: b"x" });
                assert_eq!(st, Status::Failed, "{op:?} {name}");
            }
        }
        assert_eq!(std::fs::read(dir.path().join("secret")).unwrap(), b"s");
    }

    /// A server with `opts` whose session has opened a newly created repository at `repo`.
    fn pipe_server_with(opts: ServeOptions, repo: &Path) -> PipeServer {
        let mut p = PipeServer::start(opts);
        let path = repo.display().to_string().into_bytes();
        let cfg = |op, payload| RequestRepr { op, file_type: FileType::Config, name: "", payload };
        assert_eq!(p.ask(cfg(Op::Hello, &path)).0, Status::Ok);
        assert_eq!(p.ask(cfg(Op::Create, &[])).0, Status::Ok);
        p
    }

    fn append_only() -> ServeOptions {
        ServeOptions { append_only: true, ..ServeOptions::default() }
    }

    #[test]
    fn pipelined_writes_cannot_probe_files_outside_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let secret = vec![0x42u8; 100_000];
        std::fs::write(dir.path().join("secret"), &secret).unwrap();
        std::fs::write(dir.path().join("small"), b"s").unwrap();
        // repo = dir/a/r; a pack's path is r/data/<first two chars>/name, so "../../x" is dir/x
        let mut p = pipe_server_with(append_only(), &dir.path().join("a/r"));
        // data/<fan>/name with fan "..": two levels up; archives/name: three
        for (t, up) in [(FileType::Pack, "../../"), (FileType::Archive, "../../../")] {
            // the right bytes (small: buffered path; large: the splice path's fallback) and wrong ones
            for (file, payload) in [("small", &b"s"[..]), ("secret", &secret[..]), ("small", &b"t"[..])] {
                let n = format!("{up}{file}");
                let (st, msg) = p.ask(RequestRepr { op: Op::Write, file_type: t, name: &n, payload });
                assert_eq!(st, Status::Failed, "{t:?} {n}: {}", String::from_utf8_lossy(&msg));
                assert!(String::from_utf8_lossy(&msg).contains("bad object name"), "{}", String::from_utf8_lossy(&msg));
            }
        }
        p.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), b"s");
    }

    #[test]
    fn read_part_of_an_absurd_length_is_refused_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PipeServer::with_new_repo(&dir.path().join("r"));
        let w = RequestRepr { op: Op::Write, file_type: FileType::Pack, name: "ab01", payload: &[1u8; 1000] };
        assert_eq!(p.ask(w).0, Status::Ok);
        for (off, len) in [(0u64, u64::MAX >> 1), (10, 1 << 42), (u64::MAX - 5, 10), (999, 2), (2000, 0)] {
            let mut q = [0u8; 16];
            q[..8].copy_from_slice(&off.to_be_bytes());
            q[8..].copy_from_slice(&len.to_be_bytes());
            let r = RequestRepr { op: Op::ReadPart, file_type: FileType::Pack, name: "ab01", payload: &q };
            let (st, msg) = p.ask(r);
            assert_eq!(st, Status::Failed, "{off}+{len}");
            assert!(String::from_utf8_lossy(&msg).contains("past the end"), "{}", String::from_utf8_lossy(&msg));
        }
        // the session goes on
        let mut q = [0u8; 16];
        q[..8].copy_from_slice(&998u64.to_be_bytes());
        q[8..].copy_from_slice(&2u64.to_be_bytes());
        let r = RequestRepr { op: Op::ReadPart, file_type: FileType::Pack, name: "ab01", payload: &q };
        assert_eq!(p.ask(r), (Status::Ok, vec![1, 1]));
        p.finish().unwrap();
    }

    #[test]
    fn append_only_history_keeps_the_manifest_the_server_found() {
        // the operator pruned and compacted on the server (as docs/backup-remote.md says): that
        // manifest was written locally, not through the append-only server
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        let local = LocalBackend::new(&repo);
        local.create().unwrap();
        local.write(FileType::Manifest, "manifest", b"after local compact").unwrap();
        let mut s = Server::new(append_only());
        let path = repo.display().to_string().into_bytes();
        assert_eq!(
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &path }).0,
            Status::Ok
        );
        let w = |payload| RequestRepr { op: Op::Write, file_type: FileType::Manifest, name: "manifest", payload };
        assert_eq!(ask(&mut s, w(b"attacker 1")).0, Status::Ok);
        assert_eq!(ask(&mut s, w(b"attacker 2")).0, Status::Ok);
        let kept: Vec<Vec<u8>> =
            manifest_versions(&repo).unwrap().iter().map(|(_, p)| std::fs::read(p).unwrap()).collect();
        assert_eq!(kept, [&b"after local compact"[..], b"attacker 1", b"attacker 2"]);
        rollback(&repo, manifest_versions(&repo).unwrap()[0].0).unwrap();
        assert_eq!(local.read(FileType::Manifest, "manifest").unwrap(), b"after local compact");
    }

    #[test]
    fn concurrent_append_only_sessions_keep_every_manifest_version() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        LocalBackend::new(&repo).create().unwrap();
        let (sessions, each) = (4, 60);
        std::thread::scope(|sc| {
            for i in 0..sessions {
                let repo = &repo;
                sc.spawn(move || {
                    let mut s = Server::new(append_only());
                    let path = repo.display().to_string().into_bytes();
                    let hello = RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &path };
                    assert_eq!(ask(&mut s, hello).0, Status::Ok);
                    for j in 0..each {
                        let m = format!("session {i} version {j}");
                        let r = RequestRepr {
                            op: Op::Write,
                            file_type: FileType::Manifest,
                            name: "manifest",
                            payload: m.as_bytes(),
                        };
                        let (st, msg) = ask(&mut s, r);
                        assert_eq!(st, Status::Ok, "{}", String::from_utf8_lossy(&msg));
                    }
                });
            }
        });
        let mut kept: Vec<String> = manifest_versions(&repo)
            .unwrap()
            .iter()
            .map(|(_, p)| String::from_utf8(std::fs::read(p).unwrap()).unwrap())
            .collect();
        kept.sort();
        kept.dedup();
        assert_eq!(kept.len(), sessions * each, "a version was overwritten in manifests/");
    }

    #[test]
    fn append_only_refuses_a_second_pipelined_write_of_a_name_with_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        let mut p = pipe_server_with(append_only(), &repo);
        let mut rx = p.from_server.get_ref().try_clone().map(BufReader::new).unwrap();
        // pairs of writes of one name, back to back: the second arrives while the first is
        // still being committed by a writer thread, so both pass the "is it new" check; sizes for
        // both the splice and the buffered path
        let pairs: Vec<(String, usize)> =
            (0..24).map(|i| (format!("{i:02x}{:062x}", i), if i % 2 == 0 { 200_000 } else { 1000 })).collect();
        let n = pairs.len() * 2;
        let reader = std::thread::spawn(move || {
            (0..n).map(|_| ResponseRepr::parse(&read_frame(&mut rx).unwrap().unwrap()).unwrap().status).collect()
        });
        for (name, size) in &pairs {
            for b in [0xa1u8, 0xb2] {
                let payload = vec![b; *size];
                p.send(RequestRepr { op: Op::Write, file_type: FileType::Pack, name, payload: &payload });
            }
        }
        let statuses: Vec<Status> = reader.join().unwrap();
        // the two are stored concurrently: either may land first, the other is refused, and
        // the object holds the bytes of the one acknowledged
        for (i, (name, size)) in pairs.iter().enumerate() {
            let pair = (statuses[2 * i], statuses[2 * i + 1]);
            let kept = match pair {
                (Status::Ok, Status::Refused) => 0xa1u8,
                (Status::Refused, Status::Ok) => 0xb2,
                _ => panic!("{name}: {pair:?}: both stored, one overwrote the other"),
            };
            let got = std::fs::read(repo.join("data").join(&name[..2]).join(name)).unwrap();
            assert!(got == vec![kept; *size], "{name}: the acknowledged bytes were replaced");
        }
        p.finish().unwrap();
        assert!(hidden_or_all(&repo).0.is_empty(), "no temporary file left");
    }

    #[test]
    fn storage_quota_is_measured_again_for_each_repository_a_session_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, full) = (dir.path().join("empty"), dir.path().join("full"));
        let b = LocalBackend::new(&full);
        b.create().unwrap();
        b.write(FileType::Pack, "aa00", &[0u8; 900]).unwrap();
        let mut s = Server::new(ServeOptions { storage_quota: Some(1000), ..ServeOptions::default() });
        let hello = |p: &Path| p.display().to_string().into_bytes();
        let cfg = |op, payload| RequestRepr { op, file_type: FileType::Config, name: "", payload };
        let w = |name, payload| RequestRepr { op: Op::Write, file_type: FileType::Pack, name, payload };
        // measured on an empty repository first...
        let (he, hf) = (hello(&empty), hello(&full));
        assert_eq!(ask(&mut s, cfg(Op::Hello, &he)).0, Status::Ok);
        assert_eq!(ask(&mut s, w("aa01", &[0u8; 10])).0, Status::Ok);
        // ...then switching to the full one must not carry that measure over
        assert_eq!(ask(&mut s, cfg(Op::Hello, &hf)).0, Status::Ok);
        let (st, msg) = ask(&mut s, w("aa02", &[0u8; 500]));
        assert_eq!(st, Status::Refused, "{}", String::from_utf8_lossy(&msg));
        assert!(!full.join("data/aa/aa02").exists());
        assert_eq!(ask(&mut s, w("aa03", &[0u8; 50])).0, Status::Ok);
    }

    #[test]
    fn a_dead_output_ends_the_session_with_its_own_error() {
        let (in_r, in_w) = nix::unistd::pipe().unwrap();
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        // the client is gone on the answers' side
        drop(out_r);
        let server = std::thread::spawn(move || {
            let (mut i, mut o) = (File::from(in_r), File::from(out_w));
            serve(ServeOptions::default(), &mut i, &mut o)
        });
        let mut to_server = File::from(in_w);
        let req = RequestRepr { op: Op::Exists, file_type: FileType::Config, name: "", payload: &[] }.to_frame();
        // the input stays open: the server must end by itself, then this write fails
        while to_server.write_all(&req).is_ok() {}
        let e = server.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("<client>") && e.contains("Broken pipe"), "{e}");
    }

    #[test]
    fn large_writes_of_existing_objects_go_to_a_file_not_to_memory() {
        // a hostile client resending big frames for existing names must not make the server
        // hold them in memory (up to 1 GiB each, several queued for the writer threads)
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("r");
        let old = vec![0x11u8; 300_000];
        for append_only in [true, false] {
            let b = LocalBackend::new(&repo);
            let _ = std::fs::remove_dir_all(&repo);
            b.create().unwrap();
            b.write(FileType::Pack, "ab01", &old).unwrap();
            let mut s = Server::new(ServeOptions { append_only, ..ServeOptions::default() });
            let path = repo.display().to_string().into_bytes();
            let hello = RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &path };
            assert_eq!(ask(&mut s, hello).0, Status::Ok);
            let head = RequestRepr { op: Op::Write, file_type: FileType::Pack, name: "ab01", payload: &[] }.to_frame();
            assert!(s.stage(&head[4..], old.len() as u64).is_some(), "append-only: {append_only}");
        }
        // and through a session: same bytes accepted, other bytes refused, nothing replaced
        let mut p = pipe_server_with(append_only(), &dir.path().join("r2"));
        let w = |payload| RequestRepr { op: Op::Write, file_type: FileType::Pack, name: "ab01", payload };
        assert_eq!(p.ask(w(&old)).0, Status::Ok);
        assert_eq!(p.ask(w(&old)).0, Status::Ok, "identical rewrite");
        let (other, longer) = (vec![0x22u8; 300_000], vec![0x11u8; 300_001]);
        assert_eq!(p.ask(w(&other)).0, Status::Refused);
        assert_eq!(p.ask(w(&longer)).0, Status::Refused);
        p.finish().unwrap();
        let r2 = dir.path().join("r2");
        assert!(std::fs::read(r2.join("data/ab/ab01")).unwrap() == old);
        assert!(hidden_or_all(&r2).0.is_empty(), "no temporary file left");
    }

    #[test]
    fn storage_quota_refuses_writes_past_it() {
        assert_eq!(parse_size("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5M").unwrap(), 1_500_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("5X").is_err() && parse_size("-1").is_err() && parse_size("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server::new(ServeOptions { storage_quota: Some(1000), ..ServeOptions::default() });
        let path = dir.path().join("r").display().to_string().into_bytes();
        assert_eq!(
            ask(&mut s, RequestRepr { op: Op::Hello, file_type: FileType::Config, name: "", payload: &path }).0,
            Status::Ok
        );
        let w = |name, payload| RequestRepr { op: Op::Write, file_type: FileType::Pack, name, payload };
        assert_eq!(ask(&mut s, w("aa01", &[0u8; 600])).0, Status::Ok);
        let (st, msg) = ask(&mut s, w("aa02", &[0u8; 600]));
        assert_eq!(st, Status::Refused);
        assert!(String::from_utf8_lossy(&msg).contains("quota"));
        assert!(!dir.path().join("r/data/aa/aa02").exists());
        assert_eq!(ask(&mut s, w("aa03", &[0u8; 300])).0, Status::Ok);
    }
}
