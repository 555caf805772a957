//! The NBD server: fixed-newstyle negotiation, then a transmission phase with many requests in
//! flight and out-of-order replies.
//!
//! ```text
//!  socket ─read─▶ request loop ──spawn per request──▶ BlockStore op ──▶ reply channel
//!                                                                          │
//!  socket ◀─write── reply writer (batches replies, flushes when idle) ◀────┘
//! ```

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use super::wire::{self, errno, opt, rep, tflags, Command, InfoRequest, Request};
use crate::store::{BlockStore, MAX_REQUEST};

/// Requests in flight per connection before the reader waits.
const MAX_IN_FLIGHT: usize = 128;
/// Largest option payload accepted during negotiation.
const MAX_OPTION_LEN: u32 = 64 * 1024;

/// One named export.
#[derive(Debug)]
pub struct Export<B> {
    /// Export name (the resource name).
    pub name: String,
    /// The bytes served.
    pub store: Arc<B>,
}

/// An NBD server for one export.
#[derive(Debug)]
pub struct NbdServer<B> {
    export: Arc<Export<B>>,
    /// Where the per-request tasks are counted (a resource's: its shutdown waits for them).
    tasks: Option<crate::tasks::Tasks>,
}

impl<B> Clone for NbdServer<B> {
    fn clone(&self) -> Self {
        Self { export: self.export.clone(), tasks: self.tasks.clone() }
    }
}

impl<B: BlockStore> NbdServer<B> {
    /// A server exporting `store` as `name`.
    pub fn new(name: impl Into<String>, store: Arc<B>) -> Self {
        Self { export: Arc::new(Export { name: name.into(), store }), tasks: None }
    }

    /// Counts the tasks of every connection in `tasks`.
    pub(crate) fn with_tasks(mut self, tasks: crate::tasks::Tasks) -> Self {
        self.tasks = Some(tasks);
        self
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.tasks {
            Some(t) => t.spawn(fut),
            None => tokio::spawn(fut),
        }
    }

    /// Accepts TCP clients forever (each in its own task), with `TCP_NODELAY`.
    pub async fn serve_tcp(self, listener: TcpListener) -> io::Result<()> {
        loop {
            let (sock, peer) = listener.accept().await?;
            sock.set_nodelay(true)?;
            let this = self.clone();
            tokio::spawn(async move {
                debug!(%peer, "nbd client connected");
                if let Err(e) = this.serve_conn(sock).await {
                    debug!(%peer, error = %e, "nbd connection ended");
                }
            });
        }
    }

    /// Accepts unix-socket clients forever.
    pub async fn serve_unix(self, listener: UnixListener) -> io::Result<()> {
        loop {
            let (sock, _) = listener.accept().await?;
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_conn(sock).await {
                    debug!(error = %e, "nbd connection ended");
                }
            });
        }
    }

    /// Serves one connection until the client disconnects.
    pub async fn serve_conn<S>(&self, stream: S) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let Some(no_zeroes) = self.negotiate(&mut rd, &mut wr).await? else {
            return Ok(());
        };
        let _ = no_zeroes;
        info!(export = %self.export.name, "nbd transmission started");
        // The client has the device open until its transmission phase ends, however it ends.
        struct Opened<'a, B: BlockStore>(&'a B);
        impl<B: BlockStore> Drop for Opened<'_, B> {
            fn drop(&mut self) {
                self.0.closed();
            }
        }
        self.export.store.opened();
        let _open = Opened(&*self.export.store);
        self.transmission(rd, wr).await
    }

    fn transmission_flags(&self) -> u16 {
        let mut f =
            tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES;
        if self.export.store.read_only() {
            f |= tflags::READ_ONLY;
        }
        f
    }

    fn find(&self, name: &str) -> bool {
        name.is_empty() || name == self.export.name
    }

    /// Fixed-newstyle negotiation. `Ok(Some(_))` when the client entered transmission.
    async fn negotiate<R, W>(&self, rd: &mut R, wr: &mut W) -> io::Result<Option<bool>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut greet = Vec::with_capacity(18);
        greet.extend_from_slice(&wire::NBD_MAGIC.to_be_bytes());
        greet.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        greet.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
        wr.write_all(&greet).await?;
        wr.flush().await?;
        let client_flags = rd.read_u32().await?;
        let no_zeroes = client_flags & u32::from(wire::FLAG_NO_ZEROES) != 0;
        loop {
            let magic = rd.read_u64().await?;
            if magic != wire::IHAVEOPT {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad option magic {magic:#x}")));
            }
            let option = rd.read_u32().await?;
            let len = rd.read_u32().await?;
            if len > MAX_OPTION_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("option {option} too long ({len} bytes)"),
                ));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            debug!(option, len, "nbd option");
            match option {
                opt::EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data);
                    if !self.find(&name) {
                        return Err(io::Error::new(io::ErrorKind::NotFound, format!("unknown export {name:?}")));
                    }
                    let mut b = Vec::with_capacity(134);
                    b.extend_from_slice(&self.export.store.size().to_be_bytes());
                    b.extend_from_slice(&self.transmission_flags().to_be_bytes());
                    if !no_zeroes {
                        b.extend_from_slice(&[0u8; 124]);
                    }
                    wr.write_all(&b).await?;
                    wr.flush().await?;
                    return Ok(Some(no_zeroes));
                }
                opt::ABORT => {
                    wr.write_all(&wire::option_reply(option, rep::ACK, &[])).await?;
                    wr.flush().await?;
                    return Ok(None);
                }
                opt::LIST => {
                    if !data.is_empty() {
                        wr.write_all(&wire::option_reply(option, rep::ERR_INVALID, &[])).await?;
                    } else {
                        let name = self.export.name.as_bytes();
                        let mut d = Vec::with_capacity(4 + name.len());
                        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        d.extend_from_slice(name);
                        wr.write_all(&wire::option_reply(option, rep::SERVER, &d)).await?;
                        wr.write_all(&wire::option_reply(option, rep::ACK, &[])).await?;
                    }
                }
                opt::INFO | opt::GO => match InfoRequest::parse(&data) {
                    None => {
                        wr.write_all(&wire::option_reply(option, rep::ERR_INVALID, &[])).await?;
                    }
                    Some(req) if !self.find(&req.name) => {
                        let msg = format!("no export named {:?}", req.name);
                        wr.write_all(&wire::option_reply(option, rep::ERR_UNKNOWN, msg.as_bytes())).await?;
                    }
                    Some(req) => {
                        let flags = self.transmission_flags();
                        let size = self.export.store.size();
                        wr.write_all(&wire::option_reply(option, rep::INFO, &wire::info_export(size, flags))).await?;
                        if req.requests.contains(&wire::info::BLOCK_SIZE) {
                            wr.write_all(&wire::option_reply(
                                option,
                                rep::INFO,
                                &wire::info_block_size(1, 4096, MAX_REQUEST),
                            ))
                            .await?;
                        }
                        wr.write_all(&wire::option_reply(option, rep::ACK, &[])).await?;
                        if option == opt::GO {
                            wr.flush().await?;
                            return Ok(Some(no_zeroes));
                        }
                    }
                },
                _ => {
                    // Including EXTENDED_HEADERS and STRUCTURED_REPLY, which qemu asks first:
                    // refuse them and keep the connection.
                    wr.write_all(&wire::option_reply(option, rep::ERR_UNSUP, &[])).await?;
                }
            }
            wr.flush().await?;
        }
    }

    async fn transmission<R, W>(&self, rd: R, wr: W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        // Request headers arrive many to a `read` at high queue depth; write payloads bypass the
        // buffer once it is drained.
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let (tx, rx) = mpsc::channel::<(u64, u32, Option<Vec<u8>>)>(MAX_IN_FLIGHT * 2);
        let writer = self.spawn(reply_writer(wr, rx));
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut hdr = [0u8; wire::REQUEST_LEN];
        let result = loop {
            if let Err(e) = rd.read_exact(&mut hdr).await {
                break Err(e);
            }
            let req = match Request::parse_bytes(&hdr) {
                Ok(r) => r,
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
            let permit = slots.clone().acquire_owned().await.map_err(|_| io::Error::other("semaphore closed"))?;
            let mut payload = None;
            if req.command == Command::Write {
                if req.length > MAX_REQUEST {
                    // We cannot resynchronise the stream without reading the payload; drop.
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("write of {} bytes exceeds the maximum", req.length),
                    ));
                }
                match crate::io::read_payload_pooled(&mut rd, req.length as usize).await {
                    Ok(data) => payload = Some(data),
                    Err(e) => break Err(e),
                }
            }
            if req.command == Command::Disc {
                drop(permit);
                break Ok(());
            }
            let store = self.export.store.clone();
            let tx = tx.clone();
            self.spawn(async move {
                let (err, data) = execute(&*store, req, payload).await;
                let _ = tx.send((req.cookie, err, data)).await;
                drop(permit);
            });
        };
        // Complete every request in flight before closing (the protocol requires it on DISC).
        let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
        drop(tx);
        writer.await.map_err(|e| io::Error::other(format!("writer task: {e}")))??;
        match result {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            r => r,
        }
    }
}

fn errno_of(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::InvalidInput => errno::EINVAL,
        io::ErrorKind::PermissionDenied => errno::EPERM,
        _ => errno::EIO,
    }
}

/// Runs one request against the store; returns the NBD error and the read data.
async fn execute<B: BlockStore>(store: &B, req: Request, payload: Option<bytes::Bytes>) -> (u32, Option<Vec<u8>>) {
    let ro = store.read_only();
    let res: io::Result<Option<Vec<u8>>> = match req.command {
        Command::Read => {
            if req.length > MAX_REQUEST {
                return (errno::EINVAL, None);
            }
            store.read(req.offset, req.length).await.map(Some)
        }
        Command::Write if ro => return (errno::EPERM, None),
        Command::Write => store.write(req.offset, payload.unwrap_or_default(), req.fua()).await.map(|()| None),
        Command::Flush => store.flush().await.map(|()| None),
        Command::Trim if ro => return (errno::EPERM, None),
        Command::Trim => store.trim(req.offset, req.length).await.map(|()| None),
        Command::WriteZeroes if ro => return (errno::EPERM, None),
        Command::WriteZeroes => store.write_zeroes(req.offset, req.length, req.fua()).await.map(|()| None),
        Command::Disc | Command::Unknown(_) => return (errno::EINVAL, None),
    };
    match res {
        Ok(data) => (0, data),
        Err(e) => {
            warn!(cmd = ?req.command, offset = req.offset, len = req.length, error = %e, "nbd request failed");
            (errno_of(&e), None)
        }
    }
}

async fn reply_writer<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<(u64, u32, Option<Vec<u8>>)>,
) -> io::Result<()> {
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);
    while let Some((cookie, err, data)) = rx.recv().await {
        wr.write_all(&wire::simple_reply(err, cookie)).await?;
        if let Some(d) = data {
            wr.write_all(&d).await?;
        }
        // Batch replies that are already waiting, flush once idle.
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await?;
    wr.into_inner().shutdown().await.ok();
    Ok(())
}
