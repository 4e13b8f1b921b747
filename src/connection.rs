//! Client connections that the server can cut when shutdown's grace runs
//! out, and that send what many streams write at once together.
//!
//! A connection whose client stopped reading cannot finish gracefully (its
//! last frames wait for window space); without the cut it would outlive the
//! server and keep the store open.
//!
//! HTTP/2 flushes after every batch of frames its connection task writes,
//! and that task runs right after each stream task that gives it a frame:
//! when one event goes to 100 subscribers on a connection, that was 100
//! `send` calls of one small frame each, the largest part of the server's
//! time at 10,000 subscribers. A flush is therefore put off behind the tasks already
//! waiting to run, and again as long as they keep writing (up to
//! [`MOST_PUT_OFFS`] times, or until [`HOLD`] bytes are held): the frames
//! they write go out together. An idle server puts a flush off once (the
//! health check's round trip in the aggregate bench stayed at 0.09 ms).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Written bytes held for the next flush, at most; past this a write sends
/// what is held first.
const HOLD: usize = 64 * 1024;
/// Turns of the other tasks a flush waits for, at most.
const MOST_PUT_OFFS: u32 = 16;

/// A TCP connection that fails every read and write once `cut` is
/// cancelled, so that the task serving it ends and drops what it holds;
/// writes are held until a flush, and a flush waits behind the other tasks
/// while they keep writing (see the module's documentation).
pub struct Cuttable {
    stream: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Written and not yet sent, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// How often the pending flush was put off, and how much was held the
    /// last time.
    put_offs: u32,
    held_when_put_off: usize,
}

impl Cuttable {
    pub fn new(stream: TcpStream, cut: &CancellationToken) -> Self {
        Cuttable {
            stream,
            // A token of its own, so that checking it locks nothing the
            // other connections check.
            cut: Box::pin(cut.child_token().cancelled_owned()),
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

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server shut down",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        if self.held.len() >= HOLD {
            ready!(self.poll_send(cx))?;
        }
        let n = buf.len().min(HOLD);
        self.held.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let grew = self.held.len() > self.held_when_put_off;
        if grew && self.put_offs < MOST_PUT_OFFS {
            // Woken while running, this task goes to the back of the run
            // queue: the stream tasks already woken write their frames
            // first, and they go out in the same `send`.
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
