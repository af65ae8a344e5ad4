//! The gRPC server of Envoy's rate-limit service (`--grpc-bind`): tonic over HTTP/2,
//! with the one method `ShouldRateLimit` written out by hand (what `tonic-build` would
//! generate, without `.proto` files or `protoc`).
//!
//! tonic runs its connections on a tokio runtime of its own thread (an actix arbiter),
//! and its handlers must be `Send`. The decision path is not (it runs where actix runs:
//! a thread-local deadline ticker, a local task per check), so each call is handed, as a
//! `Send` closure, to that same arbiter's local task set, and its answer comes back on a
//! oneshot channel: a queue between two tasks of one thread, not a thread hop.

use super::proto::{RateLimitRequest, RateLimitResponse};
use super::{Failure, should_rate_limit};
use crate::access::{AllowedHosts, Asker, Refused, admit, bearer};
use crate::decide::Decider;
use actix::{Arbiter, ArbiterHandle};
use futures_util::future::{Either, select};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Status, body::Body};

const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The service: the decision core, the tokens callers may present, and the arbiter
/// whose local tasks decide.
#[derive(Clone)]
pub struct RateLimitService {
    decider: Arc<Decider>,
    /// The decision token and the admin token, either accepted.
    tokens: Arc<[Option<String>; 2]>,
    arbiter: ArbiterHandle,
}

impl NamedService for RateLimitService {
    const NAME: &'static str = SERVICE;
}

impl RateLimitService {
    /// The rule of every decision surface (`/v1/*`): the decision or admin token as
    /// `authorization: Bearer <token>` metadata (Envoy's `grpc_service.initial_metadata`)
    /// when one is set, else a loopback peer.
    fn admit(&self, request: &tonic::Request<RateLimitRequest>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        // The host is not asked: Envoy addresses this service by its cluster's name in
        // `:authority`, and no web page can speak gRPC over cleartext HTTP/2, so DNS
        // rebinding cannot reach it.
        let asker = Asker {
            token: presented.as_deref(),
            ip: request.remote_addr().map(|a| a.ip()),
            host: None,
        };
        admit(asker, &AllowedHosts::default(), self.tokens.iter()).map_err(|e| match e {
            Refused::Unauthorized => Status::unauthenticated(
                "send the decision or admin token as authorization: Bearer <token>",
            ),
            Refused::Forbidden | Refused::ForeignHost => {
                Status::permission_denied("without a token, only loopback callers are answered")
            }
        })
    }

    /// Decides one request on the arbiter's local task set. A call given up by its
    /// caller (Envoy's timeout, a reset stream) is given up there too, where it waits.
    async fn answer(&self, req: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let (mut tx, rx) = tokio::sync::oneshot::channel();
        let decider = self.decider.clone();
        let sent = self.arbiter.spawn_fn(move || {
            actix::spawn(async move {
                let answer = {
                    let decided = std::pin::pin!(should_rate_limit(&decider, &req));
                    match select(decided, std::pin::pin!(tx.closed())).await {
                        Either::Left((answer, _)) => Some(answer),
                        Either::Right(_) => None,
                    }
                };
                if let Some(answer) = answer {
                    let _ = tx.send(answer);
                }
            });
        });
        if !sent {
            return Err(Status::unavailable("the rate limiter is stopping"));
        }
        match rx.await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(Failure::Invalid(m))) => Err(Status::invalid_argument(m)),
            Ok(Err(Failure::Unavailable)) | Err(_) => Err(Status::unavailable(
                "the rate limiter could not decide in time",
            )),
        }
    }
}

/// `ShouldRateLimit` as tonic's unary call.
struct ShouldRateLimit(RateLimitService);

impl UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            svc.admit(&request)?;
            svc.answer(request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for RateLimitService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async {
                Ok(Status::unimplemented("this server only answers ShouldRateLimit").into_http())
            });
        }
        let svc = ShouldRateLimit(self.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(svc, req).await)
        })
    }
}

/// Calls `ShouldRateLimit` over `channel` (a tonic client channel), with `token` as
/// `authorization: Bearer` metadata when given: the client of the tests and of the
/// benchmark, as `tonic-build` would write it.
pub async fn call<T>(
    channel: T,
    req: RateLimitRequest,
    token: Option<&str>,
) -> Result<RateLimitResponse, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static(SHOULD_RATE_LIMIT);
    let codec = tonic_prost::ProstCodec::default();
    let mut request = tonic::Request::new(req);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not a valid metadata value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// A running gRPC server.
pub struct GrpcServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    /// `None` once stopped.
    arbiter: Option<Arbiter>,
}

impl GrpcServer {
    /// Serves on `listener`, on an arbiter of its own, admitting callers that present
    /// one of `tokens` (the decision and the admin token; loopback only with neither).
    pub fn start(
        decider: Arc<Decider>,
        tokens: [Option<String>; 2],
        listener: TcpListener,
    ) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("gRPC listener on {addr}: {e}"))?;
        let arbiter = Arbiter::new();
        let service = RateLimitService {
            decider,
            tokens: Arc::new(tokens),
            arbiter: arbiter.handle(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        arbiter.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    let served = tonic::transport::Server::builder()
                        .serve_with_incoming_shutdown(service, incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        log::error!("the gRPC server on {addr} stopped: {e}");
                    }
                }
                Err(e) => log::error!("the gRPC server cannot listen on {addr}: {e}"),
            }
            let _ = finished.send(());
        });
        log::info!("Envoy rate-limit service (gRPC) listening on {addr}");
        Ok(Self {
            addr,
            stop: Some(stop),
            done: Some(done),
            arbiter: Some(arbiter),
        })
    }

    /// Stops accepting calls, lets those in flight finish (for up to `grace`), then
    /// stops the arbiter and waits for its thread: nothing decides after this returns.
    pub async fn stop(mut self, grace: std::time::Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take()
            && actix_web::rt::time::timeout(grace, done).await.is_err()
        {
            log::warn!("gRPC calls still open after {grace:?}; closing them");
        }
        if let Some(arbiter) = self.arbiter.take() {
            arbiter.stop();
            let _ = actix_web::rt::task::spawn_blocking(move || arbiter.join()).await;
        }
    }
}

impl Drop for GrpcServer {
    /// A server dropped without [`GrpcServer::stop`] (a start that failed later) stops
    /// serving at once.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(arbiter) = &self.arbiter {
            arbiter.stop();
        }
    }
}
