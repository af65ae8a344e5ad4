//! The TCP connection under a request, for the one response that must close it: a
//! finished WebSocket.
//!
//! After a response whose request body is unfinished (a WebSocket's request body is the
//! rest of the connection), actix-web's HTTP/1 dispatcher lingers, reading and discarding
//! until the peer closes or `--client-timeout-ms` passes. But after the closing handshake
//! a WebSocket client waits for the server to close the TCP connection first (RFC 6455
//! §5.5.1, §7.1.1), so both sides would wait for the timer. A handle to the socket, taken
//! when the connection is accepted, lets a finished WebSocket shut the socket's read
//! side: the dispatcher then reads end-of-file, flushes what it still holds (the Close
//! frame) and closes the connection itself, at once.
//!
//! The handle is a duplicate of the socket's descriptor, so every open connection holds
//! two descriptors; it goes with the connection.
//!
//! The same handles count the open connections, so that a stopping server can tell when
//! the last one has closed ([`OpenConnections::all_closed`]) instead of waiting for the
//! next of actix-server's once-a-second checks.

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::Extensions;
use actix_web::web::Bytes;
use std::any::Any;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// A handle to a request's TCP connection, in the connection's data.
#[derive(Clone)]
pub struct Connection(Rc<Open>);

/// One open connection: counted while it lives.
struct Open {
    /// A duplicate of the socket, when the descriptor could be duplicated.
    socket: Option<std::net::TcpStream>,
    count: Arc<OpenConnections>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.count.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.none_open.notify_waiters();
        }
    }
}

/// How many accepted connections are still open.
#[derive(Debug, Default)]
pub struct OpenConnections {
    open: AtomicUsize,
    none_open: Notify,
}

impl OpenConnections {
    /// The `HttpServer::on_connect` hook: counts each accepted connection and keeps a
    /// handle to its socket in the connection's data.
    pub fn on_connect(self: &Arc<Self>, io: &dyn Any, ext: &mut Extensions) {
        let socket = io
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|tcp| match tcp.as_fd().try_clone_to_owned() {
                Ok(fd) => Some(std::net::TcpStream::from(fd)),
                // Without it, a closed WebSocket's connection ends at the client timeout.
                Err(e) => {
                    log::warn!("cannot keep a handle to an accepted connection: {e}");
                    None
                }
            });
        self.open.fetch_add(1, Ordering::AcqRel);
        ext.insert(Connection(Rc::new(Open {
            socket,
            count: self.clone(),
        })));
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let mut closed = pin!(self.none_open.notified());
            // Registered before the check, so a close in between still wakes it.
            closed.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Connection {
    /// Ends `body`'s connection once `body` ends.
    pub fn close_after<B: MessageBody + Unpin>(&self, body: B) -> CloseAfter<B> {
        CloseAfter {
            body,
            conn: Some(self.clone()),
        }
    }
}

/// A response body that, when it ends, shuts the read side of its connection so the
/// dispatcher closes the connection as soon as the body is written.
pub struct CloseAfter<B> {
    body: B,
    conn: Option<Connection>,
}

impl<B: MessageBody + Unpin> MessageBody for CloseAfter<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let next = Pin::new(&mut self.body).poll_next(cx);
        if let Poll::Ready(None) = next
            && let Some(conn) = self.conn.take()
            && let Some(socket) = &conn.0.socket
        {
            // Reads only: what the body wrote is still flushed before the close.
            if let Err(e) = socket.shutdown(Shutdown::Read) {
                log::debug!("shutting the read side of a finished websocket: {e}");
            }
        }
        next
    }
}
