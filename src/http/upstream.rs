//! One worker's HTTP/1.1 connections to the upstream of reverse-proxy mode: a pool of
//! kept-alive connections, each framed once with actix-http's own client codec, a
//! request head and its body written with backpressure, and the response's body read
//! as a stream that gives the connection back when it ends.
//!
//! Why not awc: awc builds a fresh codec configuration for every request, and with it
//! actix-http's date service, a task and a timer of its own, spawned and aborted per
//! request (each one waking the worker's runtime through its eventfd). Forwarding
//! without deciding, measured by hand with wrk (10,000 rotating clients): 28-34k
//! requests/s through awc, 33-44k/s through this pool.

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::error::PayloadError;
use actix_http::h1::{ClientCodec, ClientPayloadCodec, Message, MessageType};
use actix_http::{RequestHead, RequestHeadType, ResponseHead, ServiceConfig, StatusCode, header};
use actix_web::rt::net::TcpStream;
use actix_web::rt::time::Instant;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long an idle connection is kept for reuse: less than the 5 s after which
/// common servers (actix-web, Node) close theirs, so a request is not sent on a
/// connection the upstream is closing.
const IDLE_KEEP_ALIVE: Duration = Duration::from_secs(4);
/// Most idle connections kept per worker; more are closed when their response ends.
const MAX_IDLE: usize = 512;

type Conn = Framed<TcpStream, ClientCodec>;
type Request = Message<(RequestHeadType, BodySize)>;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(io::Error),
    /// The request body could not be read from the client.
    Body(PayloadError),
    /// The connection broke, or the upstream's answer was not HTTP/1.x.
    Upstream(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connecting failed: {e}"),
            SendError::Body(e) => write!(f, "the request body failed: {e}"),
            SendError::Upstream(e) => f.write_str(e),
        }
    }
}

/// The kept-alive connections of one worker to one upstream.
pub struct Pool {
    /// `host:port`.
    authority: String,
    config: ServiceConfig,
    idle: RefCell<Vec<(Conn, Instant)>>,
}

impl Pool {
    pub fn new(authority: String) -> Rc<Self> {
        Rc::new(Self {
            authority,
            // One per worker: the codec's date service is a task with a timer.
            config: ServiceConfig::default(),
            idle: RefCell::new(Vec::new()),
        })
    }

    /// The newest idle connection still fit for a request, or a new one. Those idle for
    /// too long (the oldest, at the front) are closed on the way.
    async fn connection(&self) -> Result<Conn, SendError> {
        let now = Instant::now();
        {
            let mut idle = self.idle.borrow_mut();
            let expired = idle
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= IDLE_KEEP_ALIVE)
                .count();
            idle.drain(..expired);
        }
        loop {
            let Some((conn, since)) = self.idle.borrow_mut().pop() else {
                break;
            };
            if now.duration_since(since) < IDLE_KEEP_ALIVE && is_quiet(&conn) {
                return Ok(conn);
            }
        }
        let io = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(SendError::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(Framed::new(io, ClientCodec::new(self.config.clone())))
    }

    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Sends `head` with `body` (of `size`) and waits for the response head. The
    /// response's body, if it has one, is read from the returned stream.
    pub async fn send<S>(
        self: &Rc<Self>,
        head: RequestHead,
        size: BodySize,
        body: S,
    ) -> Result<(ResponseHead, Body), SendError>
    where
        S: Stream<Item = Result<Bytes, PayloadError>>,
    {
        let mut conn = self.connection().await?;
        let broken = |e: io::Error| SendError::Upstream(format!("the connection failed: {e}"));
        let mut framed = Pin::new(&mut conn);
        framed
            .as_mut()
            .write(Message::Item((RequestHeadType::Owned(head), size)))
            .map_err(broken)?;
        if !matches!(size, BodySize::None | BodySize::Sized(0)) {
            send_body(pin!(body), framed.as_mut()).await?;
        }
        poll_fn(|cx| framed.as_mut().flush::<Request>(cx))
            .await
            .map_err(broken)?;
        // Interim answers (100 Continue, 103 Early Hints) are read past, as nginx does:
        // the final answer follows on the same connection.
        let head = loop {
            match conn.next().await {
                Some(Ok(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
                Some(Ok(head)) => break head,
                Some(Err(e)) => return Err(SendError::Upstream(format!("a bad response: {e}"))),
                None => {
                    return Err(SendError::Upstream(
                        "the connection closed before a response".to_owned(),
                    ));
                }
            }
        };
        // Reused only when both sides keep it open (an HTTP/1.0 answer without
        // `Connection: keep-alive` is followed by a close) and the answer was normal.
        let reusable = conn.codec_ref().keep_alive()
            && head.keep_alive()
            && head.status != StatusCode::SWITCHING_PROTOCOLS;
        let body = match conn.codec_ref().message_type() {
            MessageType::None => {
                if reusable && conn.is_read_buf_empty() {
                    self.give_back(conn);
                }
                Body::Empty
            }
            kind => {
                // A body without a length or chunks (an HTTP/1.0 answer's, a 101's) ends
                // when the upstream closes the connection.
                let until_close = kind == MessageType::Stream
                    || !(head.headers.contains_key(header::CONTENT_LENGTH)
                        || head.headers.contains_key(header::TRANSFER_ENCODING));
                Body::Streaming {
                    until_close,
                    reusable: reusable && !until_close,
                    conn: Some(conn.into_map_codec(ClientCodec::into_payload_codec)),
                    pool: self.clone(),
                }
            }
        };
        Ok((head, body))
    }
}

/// Whether an idle connection has nothing to read: not closed by the upstream, and no
/// stray bytes (which would be taken for the next response).
fn is_quiet(conn: &Conn) -> bool {
    if !conn.is_read_buf_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(conn.io_ref().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Writes the body as it arrives, flushing whenever the write buffer is full (so a large
/// upload is never held whole) and whenever the client has nothing more yet (so a slow
/// one is not held back either), then the end of the body.
async fn send_body<S>(mut body: Pin<&mut S>, mut framed: Pin<&mut Conn>) -> Result<(), SendError>
where
    S: Stream<Item = Result<Bytes, PayloadError>>,
{
    let broken = |e: io::Error| SendError::Upstream(format!("the connection failed: {e}"));
    loop {
        let next = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_next(cx))).await {
            Poll::Ready(next) => next,
            Poll::Pending => {
                poll_fn(|cx| framed.as_mut().flush::<Request>(cx))
                    .await
                    .map_err(broken)?;
                body.next().await
            }
        };
        match next {
            Some(Ok(chunk)) => framed
                .as_mut()
                .write(Message::Chunk(Some(chunk)))
                .map_err(broken)?,
            Some(Err(e)) => return Err(SendError::Body(e)),
            None => return framed.as_mut().write(Message::Chunk(None)).map_err(broken),
        }
        if framed.is_write_buf_full() {
            poll_fn(|cx| framed.as_mut().flush::<Request>(cx))
                .await
                .map_err(broken)?;
        }
    }
}

/// A response's body as it arrives; at its end, the connection goes back to the pool
/// (dropped early, the connection is closed).
pub enum Body {
    Empty,
    Streaming {
        conn: Option<Framed<TcpStream, ClientPayloadCodec>>,
        pool: Rc<Pool>,
        /// The body ends when the upstream closes the connection.
        until_close: bool,
        /// The connection may carry another request once the body has been read.
        reusable: bool,
    },
}

impl Stream for Body {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Body::Streaming {
            conn,
            pool,
            until_close,
            reusable,
        } = self.get_mut()
        else {
            return Poll::Ready(None);
        };
        let Some(framed) = conn.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(framed).next_item(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Some(chunk)))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Ok(None))) => {
                // The whole body was read: the connection can carry the next request.
                if let Some(framed) = conn.take()
                    && *reusable
                    && framed.codec_ref().keep_alive()
                    && framed.is_read_buf_empty()
                {
                    pool.give_back(framed.into_map_codec(ClientPayloadCodec::into_message_codec));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                conn.take();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                conn.take();
                match until_close {
                    true => Poll::Ready(None),
                    false => Poll::Ready(Some(Err(PayloadError::Incomplete(None)))),
                }
            }
        }
    }
}
