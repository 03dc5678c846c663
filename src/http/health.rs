//! Liveness and readiness for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::app::AppState;

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// 200 while the process serves.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Status {
        status: "ok",
        reason: None,
    })
}

/// 200 when the node can serve; 503 with the reason while draining or the engine is down.
pub async fn ready(app: web::Data<AppState>) -> HttpResponse {
    let reason = if app.is_draining() {
        Some("draining: the node is shutting down".to_owned())
    } else {
        app.engine.health().err()
    };
    match reason {
        None => HttpResponse::Ok().json(Status {
            status: "ready",
            reason: None,
        }),
        Some(reason) => HttpResponse::ServiceUnavailable().json(Status {
            status: "unavailable",
            reason: Some(reason),
        }),
    }
}
