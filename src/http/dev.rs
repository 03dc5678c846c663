//! `POST /dev/token`: tokens for trying the hub out, in development mode only, with its CORS
//! preflight for pages on another allowed origin.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

use super::api::read_json;
use super::{allow_origin, cors_origin, not_found};
use crate::app::AppState;
use crate::auth::{mint_hs256, MintClaims};
use crate::error::HubError;
use crate::protocol::valid_channel;

/// Development tokens live an hour.
const DEV_TOKEN_TTL_S: u64 = 3600;

#[derive(Deserialize)]
struct TokenRequest {
    user: String,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
}

/// How long a browser may cache the preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// `POST /dev/token`, errors included, readable by the allowed origins.
pub async fn token(req: HttpRequest, app: web::Data<AppState>, body: web::Payload) -> HttpResponse {
    let origin = cors_origin(&req, &app);
    let mut res = mint(app, body).await.unwrap_or_else(|e| e.error_response());
    allow_origin(res.headers_mut(), origin);
    res
}

/// `OPTIONS /dev/token`: the preflight a browser sends before a cross-origin POST with a JSON
/// body. Anything else (development mode off, not a preflight for POST, an origin not
/// allowed) gets the 404 every other OPTIONS gets, with no CORS headers, which the browser
/// takes as a refusal.
pub async fn preflight(req: HttpRequest, app: web::Data<AppState>) -> HttpResponse {
    let asks_post = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|m| m.as_bytes() == b"POST");
    let origin = cors_origin(&req, &app);
    match origin {
        Some(origin) if app.config.dev_mode && asks_post => {
            let mut res = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE_S))
                .finish();
            allow_origin(res.headers_mut(), Some(origin));
            res
        }
        _ => not_found(req).await,
    }
}

async fn mint(app: web::Data<AppState>, body: web::Payload) -> Result<HttpResponse, HubError> {
    let secret = match (&app.config.jwt.secret, app.config.dev_mode) {
        (Some(secret), true) => secret,
        _ => {
            return Err(HubError::not_found(
                "no route for POST /dev/token (development mode is off)",
            ))
        }
    };
    let req: TokenRequest = read_json(body).await?;
    // The user must make a valid personal channel name, `user:<sub>`.
    if !valid_channel(&format!("user:{}", req.user)) || req.user.is_empty() {
        return Err(HubError::bad_request(
            "`user` must be 1 to 250 characters of A-Z a-z 0-9 _ - : . @ / = |",
        ));
    }
    let claims = MintClaims::new(
        &req.user,
        DEV_TOKEN_TTL_S,
        Some(vec![
            "chat:*".into(),
            "dashboard:*".into(),
            format!("user:{}", req.user),
        ]),
        Some(vec!["chat:*".into()]),
    );
    let token = mint_hs256(&claims, secret).map_err(HubError::internal)?;
    Ok(HttpResponse::Ok().json(TokenResponse { token }))
}
