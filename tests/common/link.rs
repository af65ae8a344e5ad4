//! A fault-injecting TCP proxy between ratewarden and Redis (this machine's kernel has
//! no `netem`): it forwards every connection to the Redis port it was given, and on the
//! test's command adds latency, drops everything for a while (bytes are held, as TCP
//! retransmission would deliver them once the link heals, and new connections hang), or
//! resets every connection at once (RST, mid-call), or silences every open connection for
//! good while new ones pass (a server gone without closing them). It runs on its own
//! thread, so the test's own waiting never stalls the link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// Added to each direction of every byte's trip, in microseconds.
    delay_us: AtomicU64,
    /// Dropping everything: nothing is delivered and no new connection is made.
    cut: AtomicBool,
    healed: Notify,
    /// Bumped by every reset: connections made before it are reset.
    resets: AtomicU64,
    /// Bumped by every freeze: connections made before it deliver nothing any more.
    freezes: AtomicU64,
    reset: Notify,
    /// Connections open through the link now.
    open: AtomicUsize,
}

pub struct Link {
    pub port: u16,
    state: Arc<State>,
}

impl Link {
    /// A link to the Redis on `target` (a loopback port).
    pub fn to(target: u16) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let upstream = SocketAddr::from(([127, 0, 0, 1], target));
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(client, upstream, shared.clone()));
                }
            });
        });
        Self { port, state }
    }

    /// `redis://` URL of the link.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Adds `rtt` to every round trip (half each way); zero takes it away.
    pub fn set_latency(&self, rtt: Duration) {
        let each_way = rtt.as_micros() as u64 / 2;
        self.state.delay_us.store(each_way, Ordering::SeqCst);
    }

    /// Drops everything until [`Link::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.healed.notify_waiters();
    }

    /// Resets every open connection (RST both ways), whatever is in flight on it.
    pub fn reset(&self) {
        self.state.resets.fetch_add(1, Ordering::SeqCst);
        self.state.reset.notify_waiters();
    }

    /// Every open connection delivers nothing from now on, and is never closed; new
    /// connections work.
    pub fn freeze(&self) {
        self.state.freezes.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections open through the link now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

impl State {
    async fn until_healed(&self) {
        loop {
            let healed = self.healed.notified();
            if !self.cut.load(Ordering::SeqCst) {
                return;
            }
            healed.await;
        }
    }

    async fn until_reset(&self, generation: u64) {
        loop {
            let reset = self.reset.notified();
            if self.resets.load(Ordering::SeqCst) != generation {
                return;
            }
            reset.await;
        }
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    // A connection attempt while the link is cut gets no answer until it heals.
    state.until_healed().await;
    let generation = state.resets.load(Ordering::SeqCst);
    let frozen_at = state.freezes.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    // Closed with linger 0: a reset sends RST, not FIN (and a zero linger never blocks
    // the thread on drop, which is why tokio deprecates the call in general).
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    #[allow(deprecated)]
    let _ = server.set_linger(Some(Duration::ZERO));
    state.open.fetch_add(1, Ordering::SeqCst);
    let (client_r, client_w) = tokio::io::split(client);
    let (server_r, server_w) = tokio::io::split(server);
    let both = async {
        tokio::join!(
            pump(client_r, server_w, &state, frozen_at),
            pump(server_r, client_w, &state, frozen_at)
        )
    };
    tokio::select! {
        _ = both => {}
        () = state.until_reset(generation) => {}
    }
    state.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies `from` to `to`, each chunk delivered its delay after it was read, held while
/// the link is cut, and never once the link was frozen after the connection was made
/// (`frozen_at`: the freezes before it). Ends when either side ends.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: &State,
    frozen_at: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = Duration::from_micros(state.delay_us.load(Ordering::SeqCst));
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            state.until_healed().await;
            if state.freezes.load(Ordering::SeqCst) != frozen_at {
                std::future::pending::<()>().await;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
