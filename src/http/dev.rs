//! `POST /dev/token`: tokens for trying the hub out, in development mode only.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::api::read_json;
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

pub async fn token(app: web::Data<AppState>, body: web::Payload) -> Result<HttpResponse, HubError> {
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
