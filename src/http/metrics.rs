//! `GET /metrics` (Prometheus/OpenMetrics text) and the middleware that counts every error
//! answer by its contract code.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::app::AppState;
use crate::error::ErrorCode;

pub async fn scrape(app: web::Data<AppState>) -> HttpResponse {
    if app.config.redis_url.is_some() {
        app.metrics
            .redis_up
            .set(i64::from(app.engine.health().is_ok()));
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(app.metrics.encode())
}

/// Counts error answers by the code `HubError` left on the response (see `error.rs`).
pub async fn count_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let app = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    if let (Some(app), Some(code)) = (app, res.response().extensions().get::<ErrorCode>()) {
        app.metrics.error(code.as_str());
    }
    Ok(res)
}
