//! The HTTP surface in one route table: `/ws`, the server API under `/api/`, development
//! tokens, `/health` and `/ready`, and the static demo page. Every error is the contract's JSON.
//!
//! CORS: a page served by a development server on another origin (Vite, Next) fetches
//! `/dev/token` and imports `/hub-client.js`, so those two (all static files, in fact) answer
//! CORS for the origins `HUB_ALLOWED_ORIGINS` allows, the `/dev/token` preflight included.

mod api;
mod deadletters;
mod dev;
mod files;
mod health;
mod metrics;
mod ws;

use actix_web::dev::Service;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::{ready, Either};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::HubError;

pub use metrics::count_errors;
pub use ws::tune_connection;

/// Largest server API body.
pub const MAX_API_BODY: usize = 1 << 20;

/// Registers every route; the static directory answers whatever no route does.
pub fn routes(cfg: &mut web::ServiceConfig, app: &web::Data<AppState>) {
    let expected_key = app.config.api_key.clone();
    // Every resource answers other methods with the JSON 404 too, never a plain-text 405.
    cfg.service(get_only("/ws", ws::upgrade))
        .service(get_only("/health", health::health))
        .service(get_only("/ready", health::ready))
        .service(get_only("/metrics", metrics::scrape))
        .service(
            web::resource("/dev/token")
                .route(web::post().to(dev::token))
                .route(web::method(Method::OPTIONS).to(dev::preflight))
                .default_service(web::to(not_found)),
        )
        .service(
            web::scope("/api")
                // The key is checked before routing: without it, even an unknown route is 401.
                .wrap_fn(move |req, srv| {
                    let given = req.headers().get("x-api-key").map(|v| v.as_bytes());
                    let ok = match (&expected_key, given) {
                        (Some(expected), Some(given)) => {
                            bool::from(expected.as_bytes().ct_eq(given))
                        }
                        _ => false,
                    };
                    if ok {
                        Either::Left(srv.call(req))
                    } else {
                        let error = HubError::unauthorized("missing or wrong X-API-Key");
                        Either::Right(ready(Ok(req.error_response(error))))
                    }
                })
                .configure(api::routes)
                .configure(deadletters::routes)
                .default_service(web::to(not_found)),
        )
        .default_service(web::to(files::serve));
}

/// A resource that answers GET with `handler` and any other method with the JSON 404.
fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(not_found))
}

/// JSON 404 for every path no route or file answers.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&HubError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// The request's `Origin`, when it is a browser origin allowed to read this hub's answers
/// (see [`crate::config::AllowedOrigins::allows`]); `None` without an Origin header.
fn cors_origin(req: &HttpRequest, app: &AppState) -> Option<HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = origin
        .to_str()
        .is_ok_and(|o| app.config.allowed_origins.allows(o, host));
    allowed.then(|| origin.clone())
}

/// Lets an allowed origin read `headers`' response. `Vary: Origin` either way, as the answer
/// depends on the Origin and must not be cached for another.
fn allow_origin(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
}
