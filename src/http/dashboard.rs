//! The dashboard: one Tera-rendered page and its assets, all compiled into the binary so
//! it works from any directory and with no internet access. The page itself needs no
//! token; its data calls and feeds do, and it asks for one when the server says 401.

use super::AppState;
use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use tera::{Context, Tera};

const TEMPLATE: &str = "dashboard.html";

/// The parsed template, built once at start.
pub fn templates() -> Result<Tera, String> {
    let mut tera = Tera::default();
    tera.add_raw_template(TEMPLATE, include_str!("../../templates/dashboard.html"))
        .map_err(|e| format!("the dashboard template does not parse: {e}"))?;
    Ok(tera)
}

#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "operations",
    responses((status = 200, description = "The dashboard page", body = String, content_type = "text/html"))
)]
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut ctx = Context::new();
    ctx.insert("version", env!("CARGO_PKG_VERSION"));
    ctx.insert("token_required", &state.admin_token.is_some());
    ctx.insert("config_model", &crate::config::form_model());
    let html = state
        .templates
        .render(TEMPLATE, &ctx)
        .map_err(|e| ApiError::Internal(format!("rendering the dashboard: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'",
        ))
        .body(html))
}

/// Files under `static/`, with their content types.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/dashboard.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../static/favicon.svg"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../static/vendor/uplot/LICENSE"),
    ),
];

/// The names `/static/{file}` serves.
pub(crate) fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(name, _, _)| *name)
}

#[utoipa::path(
    get,
    path = "/static/{file}",
    tag = "operations",
    params(("file" = String, Path, description = "dashboard.js, dashboard.css, favicon.svg, or a vendored file")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
            (String = "image/svg+xml"),
        )),
        (status = 404, description = "No such file", body = crate::error::ErrorBody),
    )
)]
pub async fn asset(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let name = req.match_info().query("file");
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::NotFound(format!("There is no static file {name:?}.")))?;
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*body))
}
