//! The web console: static files from `web-console/`, compiled into the binary so that the hub
//! serves its console from wherever it runs. `/` is the app; assets live under `/console/`.

use actix_web::{web, HttpResponse};

use crate::api::error::ApiError;

macro_rules! console_files {
    ($($name:literal),* $(,)?) => {
        const FILES: &[(&str, &str)] = &[$(($name, include_str!(concat!("../../web-console/", $name)))),*];
    };
}

console_files!(
    "index.html", "style.css", "appointments.css", "app.js", "api.js", "live.js", "beds.js", "audit.js", "dom.js",
    "appointments.js", "schedule.js", "booking.js", "my-appointments.js", "stock.js", "dispensing.js", "map.js",
    "consult.js", "consult.css",
);

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn serve(name: &str) -> Result<HttpResponse, ApiError> {
    let (_, body) = FILES.iter().find(|(file, _)| *file == name).ok_or_else(|| ApiError::not_found("console file"))?;
    Ok(HttpResponse::Ok()
        .content_type(content_type(name))
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"))
        .body(*body))
}

async fn index() -> Result<HttpResponse, ApiError> {
    serve("index.html")
}

async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&path)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index)).route("/console/{file}", web::get().to(asset));
}
