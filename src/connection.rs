//! Client connections that send what many streams write at once together.
//!
//! HTTP/2 flushes after every batch of frames its connection writes. A
//! connection's task polls its calls, then the connection (`crate::serve`),
//! so one event's frames for all the subscribers of a connection are written
//! in one go; but other connections' calls may write too while it runs, and
//! a flush right away would send each batch alone. A flush is therefore put
//! off behind the tasks already waiting to run, and again as long as they
//! keep writing (up to [`MOST_PUT_OFFS`] times, or until [`HOLD`] bytes are
//! held): the frames they write go out together. An idle server puts a
//! flush off once (the health check's round trip in the aggregate bench
//! stayed at 0.09 ms).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Written bytes held for the next flush, at most; past this a write sends
/// what is held first.
const HOLD: usize = 64 * 1024;
/// Turns of the other tasks a flush waits for, at most.
const MOST_PUT_OFFS: u32 = 16;

/// A TCP connection whose writes are held until a flush, and whose flush
/// waits behind the other tasks while they keep writing (see the module's
/// documentation).
pub struct HeldWrites {
    stream: TcpStream,
    /// Written and not yet sent, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// How often the pending flush was put off, and how much was held the
    /// last time.
    put_offs: u32,
    held_when_put_off: usize,
}

impl HeldWrites {
    pub fn new(stream: TcpStream) -> Self {
        HeldWrites {
            stream,
            held: Vec::new(),
            sent: 0,
            put_offs: 0,
            held_when_put_off: 0,
        }
    }

    /// Sends everything held.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for HeldWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeldWrites {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() >= HOLD {
            ready!(self.poll_send(cx))?;
        }
        let n = buf.len().min(HOLD);
        self.held.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let grew = self.held.len() > self.held_when_put_off;
        if grew && self.put_offs < MOST_PUT_OFFS {
            // Woken while running, this task goes to the back of the run
            // queue: the other connections' tasks already woken write their
            // frames first, and what this one writes meanwhile goes out in
            // the same `send`.
            self.put_offs += 1;
            self.held_when_put_off = self.held.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_send(cx))?;
        self.put_offs = 0;
        self.held_when_put_off = 0;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
