//! Reverse-proxy mode (`--upstream http://host:port`): every request outside ratewarden's
//! own paths has been decided by the rate-limit middleware (a refused one never gets
//! here) and is forwarded to the upstream, as nginx's `proxy_pass` would: bodies
//! streamed both ways, hop-by-hop headers dropped, `X-Forwarded-*` set, 502 when the
//! upstream cannot be reached and 504 when it does not answer in time.

use super::client_id::Identity;
use super::middleware::is_exempt;
use super::upstream::{Pool, SendError};
use super::{AppState, content_length, nothing_served};
use crate::decide::deadline;
use crate::error::ApiError;
use crate::metrics::UpstreamFailure;
use actix_web::body::BodySize;
use actix_web::body::{BodyStream, BoxBody, SizedStream};
use actix_web::dev::RequestHead;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Uri, Version, uri};
use actix_web::rt::time::Instant;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where and how requests are forwarded (from `--upstream`, `--upstream-timeout-ms`
/// and `--max-proxy-body`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://host:port`: the request's own path and query are appended.
    pub origin: String,
    pub timeout: Duration,
    pub max_body: Option<u64>,
}

/// One worker's connections to the upstream.
pub struct Forwarder {
    pool: Rc<Pool>,
    upstream: Upstream,
    /// The upstream's `host[:port]`: the `Host` of a request that names none.
    host: Option<HeaderValue>,
}

impl Forwarder {
    pub fn new(upstream: Upstream) -> Self {
        let authority = upstream.origin.trim_start_matches("http://");
        // A bracketed IPv6 address, or a name, with or without its port.
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && !port.contains(']'));
        let host = HeaderValue::try_from(authority).ok();
        let address = match has_port {
            true => authority.to_owned(),
            false => format!("{authority}:80"),
        };
        Self {
            pool: Pool::new(address),
            upstream,
            host,
        }
    }
}

/// Drops the hop-by-hop headers, which describe one connection and are never forwarded
/// (RFC 9110 7.6.1), and those the `Connection` header names. The body's framing
/// (`Content-Length`, `Transfer-Encoding`) is set anew for each side, and `Expect` was
/// answered by this server already.
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    // The names `Connection` lists, read once (usually none but `keep-alive`/`close`).
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    headers.retain(|name, _| {
        !(*name == header::CONNECTION
            || *name == KEEP_ALIVE
            || *name == header::TE
            || *name == header::TRAILER
            || *name == header::TRANSFER_ENCODING
            || *name == header::UPGRADE
            || *name == header::CONTENT_LENGTH
            || *name == header::EXPECT
            || name.as_str().starts_with("proxy-")
            || listed.iter().any(|l| l == name.as_str()))
    });
}

/// The headers sent upstream: the client's, minus hop-by-hop ones, with
/// `X-Forwarded-For` appended to (its earlier hops kept only from a trusted proxy, as
/// are a trusted proxy's `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP` and
/// `Forwarded`), and `X-Forwarded-Proto` and `X-Forwarded-Host` set.
fn upstream_headers(
    incoming: &HeaderMap,
    peer: Option<SocketAddr>,
    identity: &Identity,
) -> HeaderMap {
    let peer = peer.map(|p| p.ip().to_canonical());
    let trusted = peer.is_some_and(|ip| identity.is_trusted(ip));
    let mut out = incoming.clone();
    drop_hop_by_hop(&mut out);
    out.remove(X_FORWARDED_FOR);
    if !trusted {
        for name in [
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_REAL_IP,
            header::FORWARDED,
        ] {
            out.remove(name);
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

/// Forwards one allowed request and streams the upstream's answer back (the middleware
/// adds the rate-limit headers to it).
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // ratewarden's own prefixes are never decided, so never forwarded either
    // (`/health/x`, `/static`): what is not served here is not found.
    let forwarder = req.app_data::<Forwarder>();
    let Some(forwarder) = forwarder.filter(|_| !is_exempt(req.match_info().as_str())) else {
        return Err(nothing_served(&req));
    };
    let upstream = &forwarder.upstream;
    if *req.method() == Method::CONNECT {
        return Err(ApiError::MethodNotAllowed);
    }
    let Some(target) = req
        .uri()
        .path_and_query()
        .filter(|pq| pq.as_str().starts_with('/'))
        .cloned()
    else {
        return Err(ApiError::bad_request(
            "invalid_target",
            "Only origin-form request targets (/path?query) are forwarded.",
        ));
    };
    let upgrade = req.headers().get_all(header::UPGRADE);
    if upgrade
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().to_ascii_lowercase().starts_with("websocket"))
    {
        return Err(ApiError::NotImplemented(
            "WebSocket upgrades are not proxied; connect to the upstream directly.".to_owned(),
        ));
    }
    let declared = content_length(req.headers());
    // Framed as actix read it: chunked wins over a Content-Length (and is refused on
    // HTTP/1.0 before this point).
    let chunked = req.chunked().unwrap_or(false);
    if let (Some(limit), Some(n)) = (upstream.max_body, declared)
        && n > limit
    {
        return Err(ApiError::PayloadTooLarge { limit });
    }

    let mut head = RequestHead::default();
    head.method = req.method().clone();
    head.version = Version::HTTP_11;
    let mut parts = uri::Parts::default();
    parts.path_and_query = Some(target);
    head.uri = Uri::from_parts(parts).unwrap_or_default();
    head.headers = upstream_headers(req.headers(), req.peer_addr(), &state.identity);
    if !head.headers.contains_key(header::HOST)
        && let Some(host) = &forwarder.host
    {
        // An HTTP/1.0 client may name no host: the upstream is the host then.
        head.headers.insert(header::HOST, host.clone());
    }

    // The body streams through as it arrives, counted against `--max-proxy-body`.
    let too_large = Rc::new(Cell::new(false));
    let (flag, limit) = (too_large.clone(), upstream.max_body);
    let mut seen = 0u64;
    let body = payload.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if limit.is_some_and(|l| seen > l) {
            flag.set(true);
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    });
    // Framed as actix read it (it refused two lengths, a bad one, or both a length and
    // chunked, before this point).
    let size = match (chunked, declared) {
        (true, _) => BodySize::Stream,
        (false, Some(n)) => BodySize::Sized(n),
        (false, None) => BodySize::None,
    };
    // The decision's cheap deadline, not a timer per request: registering one wakes the
    // runtime's timer driver each time the wheel was empty (an eventfd write).
    let deadline = Instant::now() + upstream.timeout;
    let answer = match deadline::within(
        deadline,
        std::pin::pin!(forwarder.pool.send(head, size, body)),
    )
    .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(SendError::Body(_))) if too_large.get() => {
            return Err(ApiError::PayloadTooLarge {
                limit: limit.unwrap_or(0),
            });
        }
        Ok(Err(SendError::Body(e))) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("The request body could not be read: {e}"),
            ));
        }
        Err(_) => {
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
    let (mut answer, body) = answer;
    let status = answer.status;
    if status.is_informational() {
        // Interim answers were read past; what is left is a 101 that no upgrade asked
        // for (upgrades are not forwarded).
        state
            .metrics
            .upstream_error(UpstreamFailure::invalid_response);
        return Err(ApiError::BadGateway(format!(
            "The upstream answered {status}, which this proxy does not pass on."
        )));
    }

    let upstream_length = content_length(&answer.headers);
    let mut headers = std::mem::take(&mut answer.headers);
    drop_hop_by_hop(&mut headers);
    // Answers that never have a body (RFC 9110 6.4.1) are not read for one: a 304's
    // Content-Length describes the representation, and the codec would wait for it
    // (the connection is closed instead of reused). Their Content-Length is passed on
    // as it was.
    let bodiless = *req.method() == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = match (bodiless, upstream_length) {
        // actix writes a 304's Content-Length header as given, and a HEAD answer's
        // from the body's size (and never the body).
        (true, Some(n)) if status == StatusCode::NOT_MODIFIED => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            BoxBody::new(actix_web::body::None::new())
        }
        (true, Some(n)) if status != StatusCode::NO_CONTENT => {
            let nothing = futures_util::stream::empty::<Result<web::Bytes, PayloadError>>();
            BoxBody::new(SizedStream::new(n, nothing))
        }
        (true, _) => BoxBody::new(actix_web::body::None::new()),
        (false, Some(n)) => BoxBody::new(SizedStream::new(n, body)),
        (false, None) => BoxBody::new(BodyStream::new(body)),
    };
    let mut res = HttpResponse::with_body(status, body);
    *res.headers_mut() = headers;
    Ok(res)
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
