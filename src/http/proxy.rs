//! Reverse-proxy mode (`--upstream http://host:port`): every request outside ratewarden's
//! own paths has been decided by the rate-limit middleware (a refused one never gets
//! here) and is forwarded to the upstream, as nginx's `proxy_pass` would: bodies
//! streamed both ways, hop-by-hop headers dropped, `X-Forwarded-*` set, 502 when the
//! upstream cannot be reached and 504 when it does not answer in time.

use super::AppState;
use super::client_id::Identity;
use crate::error::ApiError;
use crate::metrics::UpstreamFailure;
use actix_web::body::{BodyStream, SizedStream};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Where and how requests are forwarded (from `--upstream`, `--upstream-timeout-ms`
/// and `--max-proxy-body`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://host:port`: the request's own path and query are appended.
    pub origin: String,
    pub timeout: Duration,
    pub max_body: Option<u64>,
}

/// One worker's connections to the upstream (an `awc` client lives on one thread).
pub struct Forwarder {
    client: awc::Client,
    upstream: Upstream,
}

impl Forwarder {
    pub fn new(upstream: Upstream) -> Self {
        let connector = awc::Connector::new()
            .timeout(upstream.timeout)
            // As many connections as requests in flight, as nginx's `proxy_pass`; idle
            // ones are kept for reuse (and checked before each).
            .limit(0);
        let client = awc::Client::builder()
            .connector(connector)
            // The request's own headers only (no User-Agent or Date of ours), its
            // redirects passed back to the client, and our own deadline (awc's would
            // also cut a long response body short).
            .no_default_headers()
            .disable_redirects()
            .disable_timeout()
            .finish();
        Self { client, upstream }
    }
}

/// Hop-by-hop headers, which describe one connection and are never forwarded (RFC 9110
/// 7.6.1), besides those the `Connection` header names. The body's framing
/// (`Content-Length`, `Transfer-Encoding`) is set anew for each side, and `Expect` was
/// answered by this server already.
fn is_hop_by_hop(name: &HeaderName, connection: &HeaderMap) -> bool {
    let listed = |name: &HeaderName| {
        connection
            .get_all(header::CONNECTION)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
    };
    *name == header::CONNECTION
        || *name == KEEP_ALIVE
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::CONTENT_LENGTH
        || *name == header::EXPECT
        || name.as_str().starts_with("proxy-")
        || listed(name)
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, with
/// `X-Forwarded-For` appended to (its earlier hops kept only from a trusted proxy, as
/// are a trusted proxy's `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`), and
/// `X-Forwarded-Proto` and `X-Forwarded-Host` set.
fn upstream_headers(
    incoming: &HeaderMap,
    peer: Option<SocketAddr>,
    identity: &Identity,
) -> HeaderMap {
    let peer = peer.map(|p| p.ip().to_canonical());
    let trusted = peer.is_some_and(|ip| identity.is_trusted(ip));
    let mut out = HeaderMap::with_capacity(incoming.len() + 3);
    for (name, value) in incoming.iter() {
        if is_hop_by_hop(name, incoming) {
            continue;
        }
        let from_a_proxy = *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_FORWARDED_HOST
            || *name == header::FORWARDED;
        if from_a_proxy && !trusted {
            continue;
        }
        if *name != X_FORWARDED_FOR {
            out.append(name.clone(), value.clone());
        }
    }
    let mut hops: Vec<&str> = Vec::new();
    if trusted {
        hops.extend(
            incoming
                .get_all(X_FORWARDED_FOR)
                .filter_map(|v| v.to_str().ok()),
        );
    }
    let peer_text = peer.map(|ip| ip.to_string());
    hops.extend(peer_text.as_deref());
    if let Ok(v) = HeaderValue::try_from(hops.join(", "))
        && !v.is_empty()
    {
        out.insert(X_FORWARDED_FOR, v);
    }
    if !out.contains_key(&X_FORWARDED_PROTO) {
        out.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !out.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = incoming.get(header::HOST)
    {
        out.insert(X_FORWARDED_HOST, host.clone());
    }
    out
}

/// `Content-Length` when it is given once and is a number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// Forwards one allowed request and streams the upstream's answer back (the middleware
/// adds the rate-limit headers to it).
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(forwarder) = req.app_data::<Forwarder>() else {
        return Err(ApiError::NotFound(format!(
            "Nothing is served at {}.",
            req.path()
        )));
    };
    let upstream = &forwarder.upstream;
    if req.headers().contains_key(header::UPGRADE) {
        return Err(ApiError::NotImplemented(
            "Protocol upgrades (WebSocket included) are not proxied; connect to the upstream directly.".to_owned(),
        ));
    }
    let declared = content_length(req.headers());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if req.headers().contains_key(header::CONTENT_LENGTH) && declared.is_none() {
        return Err(ApiError::bad_request(
            "invalid_content_length",
            "Content-Length must be one number.",
        ));
    }
    if let (Some(limit), Some(n)) = (upstream.max_body, declared)
        && n > limit
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }

    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = forwarder
        .client
        .request(req.method().clone(), format!("{}{target}", upstream.origin));
    *request.headers_mut() = upstream_headers(req.headers(), req.peer_addr(), &state.identity);

    // The body streams through as it arrives, counted against `--max-proxy-body`.
    let too_large = Rc::new(Cell::new(false));
    let client_broke = Rc::new(Cell::new(false));
    let (flag, broke, limit) = (too_large.clone(), client_broke.clone(), upstream.max_body);
    let mut seen = 0u64;
    let body = payload.map(move |chunk| {
        let chunk = chunk.inspect_err(|_| broke.set(true))?;
        seen += chunk.len() as u64;
        if limit.is_some_and(|l| seen > l) {
            flag.set(true);
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    });
    let sending = match (declared, chunked) {
        (Some(0), _) | (None, false) => request.send_body(actix_web::body::None::new()),
        (Some(n), _) => request.send_body(SizedStream::new(n, body)),
        (None, true) => request.send_body(BodyStream::new(body)),
    };
    let answer = match actix_web::rt::time::timeout(upstream.timeout, sending).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) if too_large.get() => {
            return Err(ApiError::PayloadTooLarge {
                limit: limit.unwrap_or(0),
            });
        }
        Ok(Err(e)) if client_broke.get() => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("The request body could not be read: {e}"),
            ));
        }
        Ok(Err(awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout)))
        | Err(_) => {
            state.metrics.upstream_error(UpstreamFailure::timeout);
            return Err(ApiError::GatewayTimeout(format!(
                "The upstream did not answer within {} ms.",
                upstream.timeout.as_millis()
            )));
        }
        Ok(Err(e)) => {
            state.metrics.upstream_error(UpstreamFailure::unreachable);
            return Err(ApiError::BadGateway(format!(
                "The upstream could not be reached: {e}."
            )));
        }
    };

    let mut res = HttpResponse::build(answer.status());
    let upstream_length = content_length(answer.headers());
    for (name, value) in answer.headers().iter() {
        if !is_hop_by_hop(name, answer.headers()) {
            res.append_header((name.clone(), value.clone()));
        }
    }
    Ok(match upstream_length {
        Some(n) => res.body(SizedStream::new(n, answer)),
        None => res.body(BodyStream::new(answer)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client_id::Cidr;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name).map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn drops_hop_by_hop_headers_and_those_connection_names() {
        let incoming = headers(&[
            ("host", "app.example"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("expect", "100-continue"),
            ("content-length", "3"),
            ("x-client-id", "c1"),
            ("accept", "a"),
            ("accept", "b"),
        ]);
        let peer = "192.0.2.7:4000".parse().ok();
        let out = upstream_headers(&incoming, peer, &Identity::default());
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "host",
                "x-client-id",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(values(&out, "accept"), ["a", "b"]);
        assert_eq!(values(&out, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["app.example"]);
        assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
    }

    #[test]
    fn forwarding_headers_are_kept_only_from_a_trusted_proxy() {
        let incoming = headers(&[
            ("host", "inner:8080"),
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let peer: Option<SocketAddr> = "127.0.0.1:5000".parse().ok();
        let untrusted = upstream_headers(&incoming, peer, &Identity::default());
        assert_eq!(values(&untrusted, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(values(&untrusted, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&untrusted, "x-forwarded-host"), ["inner:8080"]);
        assert!(untrusted.get("forwarded").is_none());
        let identity = Identity {
            header: None,
            trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        };
        let trusted = upstream_headers(&incoming, peer, &identity);
        assert_eq!(
            values(&trusted, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
        );
        assert_eq!(values(&trusted, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&trusted, "x-forwarded-host"), ["app.example"]);
        assert_eq!(values(&trusted, "forwarded"), ["for=10.0.0.1"]);
    }

    #[test]
    fn reads_one_numeric_content_length() {
        assert_eq!(
            content_length(&headers(&[("content-length", "42")])),
            Some(42)
        );
        assert_eq!(content_length(&headers(&[("content-length", "4x")])), None);
        let twice = headers(&[("content-length", "1"), ("content-length", "1")]);
        assert_eq!(content_length(&twice), None);
        assert_eq!(content_length(&HeaderMap::new()), None);
    }
}
