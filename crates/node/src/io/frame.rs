//! Reading and writing whole witness frames on a stream, with deadlines.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::witness::wire::{frame_len, HEADER_LEN, MAX_BODY};

/// Reads one whole frame. `Ok(None)` on a clean end of stream between frames; an error on a
/// timeout, a short frame or an oversized length.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; HEADER_LEN];
    let read = async {
        match r.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = frame_len(&buf).unwrap_or(HEADER_LEN);
        if len > HEADER_LEN + MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
        }
        buf.resize(len, 0);
        r.read_exact(&mut buf[HEADER_LEN..]).await?;
        Ok(Some(()))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(()))) => Ok(Some(buf)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing received for {timeout:?}"))),
    }
}

/// Writes one frame within `timeout`.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8], timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, w.write_all(frame)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("could not send for {timeout:?}"))),
    }
}
