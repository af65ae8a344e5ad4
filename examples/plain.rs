//! The benchmark's physical limit: a plain actix-web server with no limiter at all,
//! answering `/api/data` with the same JSON as ratewarden's demo endpoint.
//! Usage: `cargo run --release --example plain -- 127.0.0.1:8101`

use actix_web::{App, HttpResponse, HttpServer, web};
use ratewarden::clock::{Clock, SystemClock};
use ratewarden::http::demo::data_body;

async fn data() -> HttpResponse {
    HttpResponse::Ok().json(data_body(SystemClock.now()))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8101".to_owned());
    HttpServer::new(|| App::new().route("/api/data", web::get().to(data)))
        .bind(bind)?
        .run()
        .await
}
