//! The dead-letter routes of the server API (docs/protocol.md §6.9): list, replay, delete. They speak
//! HTTP and JSON only; the sources are [`crate::deadletters::DeadLetters`].
//!
//! With no source (memory engine, no webhooks) the list is empty, a replay replays nothing
//! (`{"replayed":0}`) and a delete answers 404 `not_found`, as for any id that names no dead
//! letter.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::api::{check_length, read_json};
use super::not_found;
use crate::app::AppState;
use crate::deadletters::DeadLetter;
use crate::error::HubError;

/// Dead letters listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 100;

/// Where the `{id}` of `DELETE /api/deadletters/{id}` starts in the path.
const ID_PREFIX: &str = "/api/deadletters/";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/deadletters")
            .route(web::get().to(list))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/deadletters/replay")
            .route(web::post().to(replay))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/deadletters/{id:.*}")
            .route(web::delete().to(delete))
            .default_service(web::to(not_found)),
    );
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u64>,
}

#[derive(Serialize)]
struct ListAnswer {
    entries: Vec<DeadLetter>,
}

/// `GET /api/deadletters?limit=`: newest first across every source; `limit`
/// defaults to 100 and is capped at 1000.
async fn list(req: HttpRequest, app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| HubError::bad_request(format!("invalid query: {e}")))?;
    let limit = query
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let entries = app.dead_letters.list(limit).await?;
    Ok(HttpResponse::Ok().json(ListAnswer { entries }))
}

#[derive(Deserialize)]
struct ReplayBody {
    ids: Vec<String>,
}

#[derive(Serialize)]
struct ReplayAnswer {
    replayed: usize,
}

/// `POST /api/deadletters/replay` `{"ids":[..]}`: ids that name no dead letter are skipped.
async fn replay(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, HubError> {
    check_length(&req)?;
    let body: ReplayBody = read_json(body).await?;
    let replayed = app.dead_letters.replay(&body.ids).await?;
    Ok(HttpResponse::Ok().json(ReplayAnswer { replayed }))
}

#[derive(Serialize)]
struct DeleteAnswer {
    deleted: usize,
}

/// `DELETE /api/deadletters/{id}`, the id percent-decoded from the rest of the path.
async fn delete(req: HttpRequest, app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let raw = req.path().strip_prefix(ID_PREFIX).unwrap_or_default();
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| HubError::bad_request("the id is not valid UTF-8"))?;
    let deleted = app.dead_letters.delete(&id).await?;
    if deleted {
        Ok(HttpResponse::Ok().json(DeleteAnswer { deleted: 1 }))
    } else {
        Err(HubError::not_found(format!("no dead letter `{id}`")))
    }
}
