//! `GET /ws`: admits a connection (origin, token, connection slot) and starts its session.
//! The upgrade always completes; a refused connection is closed at once with the contract's
//! reason, so a browser can tell "fix your token" from network trouble. The connection's input
//! reaches the session only through the bounded read path of [`read`].

mod read;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::Codec;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{handshake, WebsocketContext};

use crate::app::AppState;
use crate::auth::Identity;
use crate::config::AllowedOrigins;
use crate::error::HubError;
use crate::protocol::Close;
use crate::session::{Frames, Metered, Outbound, Refused, WsSession};

pub async fn upgrade(
    req: HttpRequest,
    payload: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, HubError> {
    let mut response = handshake(&req)
        .map_err(|e| HubError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    let codec = Codec::new().max_size(app.config.max_frame_bytes);
    // A message may take up to a ping interval to arrive: one sent slower than that holds
    // memory longer than the liveness check would let a silent peer hold its connection.
    let payload = read::Inbound::new(
        payload,
        app.config.max_frame_bytes,
        app.config.ping_interval,
    );
    let client: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
    // A draining node still completes the upgrade, so the browser learns why: 1001, go
    // elsewhere.
    let admitted = if app.is_draining() {
        Err(Close::GoingAway)
    } else {
        admit(&req, &app, &client).await
    };
    match admitted {
        Ok(identity) => {
            app.metrics.connect("accepted");
            let outbound = Outbound::new(app.config.client_queue_bytes);
            let frames = Frames::default();
            let session = WsSession::new(
                client,
                identity,
                Arc::clone(&app.session),
                Arc::clone(&outbound),
                frames.clone(),
            );
            let stream = WebsocketContext::with_codec(session, payload, codec);
            Ok(response.streaming(Metered::new(stream, outbound, frames)))
        }
        Err(close) => {
            app.metrics.connect(close.label());
            tracing::info!(
                client = &*client,
                code = close.code(),
                reason = close.label(),
                "connection refused"
            );
            Ok(response.streaming(WebsocketContext::with_codec(Refused(close), payload, codec)))
        }
    }
}

/// Every check a new connection passes, in order; on success the user holds a connection slot.
async fn admit(req: &HttpRequest, app: &AppState, client: &str) -> Result<Identity, Close> {
    if !origin_allowed(req, &app.config.allowed_origins) {
        return Err(Close::OriginNotAllowed);
    }
    let token = token_of(req).ok_or(Close::InvalidToken)?;
    let identity = app.verifier.verify(&token).map_err(|e| {
        tracing::debug!(client = client, error = %e, "token refused");
        e.close()
    })?;
    match app
        .engine
        .acquire_connection(&identity.user, client, app.config.max_connections_per_user)
        .await
    {
        Ok(true) => Ok(identity),
        Ok(false) => Err(Close::ConnectionLimit),
        Err(e) => {
            tracing::warn!(
                client = client,
                user = identity.user.as_str(),
                error = %e,
                "cannot take a connection slot"
            );
            Err(Close::InternalError)
        }
    }
}

/// The token from `?token=` (browsers) or `Authorization: Bearer` (services).
fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let (scheme, token) = auth.to_str().ok()?.trim_start().split_once(' ')?;
        // Auth schemes are case-insensitive (RFC 9110 §11.1).
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        return Some(token.trim().to_owned());
    }
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok()?;
    query.get("token").cloned()
}

/// No Origin header means not a browser: allowed. Otherwise see [`AllowedOrigins::allows`].
fn origin_allowed(req: &HttpRequest, allowed: &AllowedOrigins) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    origin.to_str().is_ok_and(|o| allowed.allows(o, host))
}

/// Per-connection socket options, set as each TCP connection is accepted: no Nagle delay for
/// small frames, and a user timeout so that a peer that stops acknowledging data (dead, or
/// never reading) is dropped by the kernel even when the session cannot write its ping.
pub fn tune_connection(conn: &dyn std::any::Any, ping_interval: Duration) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = tcp.set_nodelay(true);
        let sock = socket2::SockRef::from(tcp);
        let _ = sock.set_tcp_user_timeout(Some(ping_interval.saturating_mul(2)));
    }
}
