//! The benchmark's peer: the same `/api/data` behind actix-governor, the most used actix
//! rate limiter (an in-process DashMap of GCRA cells), keyed by `X-Client-ID` like
//! ratewarden. It keeps nothing on disk and publishes no events.
//! With `--headers`, it answers with actix-governor's own rate-limit headers
//! (`x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-after` on a refusal), as
//! ratewarden always does with its own.
//! Usage: `cargo run --release --example governor_peer -- 127.0.0.1:8102 [per_second] [--headers]`

use actix_governor::{Governor, GovernorConfigBuilder, KeyExtractor, SimpleKeyExtractionError};
use actix_web::dev::ServiceRequest;
use actix_web::{App, HttpResponse, HttpServer, web};
use ratewarden::clock::{Clock, SystemClock};
use ratewarden::http::demo::data_body;

#[derive(Clone)]
struct ClientId;

impl KeyExtractor for ClientId {
    type Key = String;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<String, Self::KeyExtractionError> {
        match req
            .headers()
            .get("x-client-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => Ok(id.to_owned()),
            None => Ok(req
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()),
        }
    }
}

async fn data() -> HttpResponse {
    HttpResponse::Ok().json(data_body(SystemClock.now()))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let headers = std::env::args().any(|a| a == "--headers");
    let mut args = std::env::args().skip(1).filter(|a| a != "--headers");
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:8102".to_owned());
    let per_second: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000_000);
    let mut builder = GovernorConfigBuilder::default();
    builder
        .requests_per_second(per_second)
        .burst_size(u32::try_from(per_second).unwrap_or(u32::MAX));
    let mut builder = builder.key_extractor(ClientId);
    // The two configs are of different types: one server each.
    macro_rules! serve {
        ($config:expr) => {{
            let config = $config.expect("a positive rate and burst");
            HttpServer::new(move || {
                App::new()
                    .wrap(Governor::new(&config))
                    .route("/api/data", web::get().to(data))
            })
            .bind(bind)?
            .run()
            .await
        }};
    }
    match headers {
        true => serve!(builder.use_headers().finish()),
        false => serve!(builder.finish()),
    }
}
