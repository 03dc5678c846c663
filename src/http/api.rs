//! The server API for services (`/api/...`, behind `X-API-Key`): publish, broadcast, history,
//! presence, disconnect, channels and node info.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{not_found, MAX_API_BODY};
use crate::app::AppState;
use crate::bridge::streams::StreamInfo;
use crate::engine::{NodeInfo, PublishRequest, Published};
use crate::error::HubError;
use crate::hub;
use crate::metrics::Source;
use crate::protocol::{valid_channel, ClientInfo, Close, Message, Position};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/publish")
            .route(web::post().to(publish))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/broadcast")
            .route(web::post().to(broadcast))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/disconnect")
            .route(web::post().to(disconnect))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/channels")
            .route(web::get().to(channels))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/info")
            .route(web::get().to(info))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/history/{channel:.*}")
            .route(web::get().to(history))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/presence/{channel:.*}")
            .route(web::get().to(presence))
            .default_service(web::to(not_found)),
    );
}

/// Reads a JSON object body of at most 1 MiB, whatever its content type (so `curl -d` works).
pub async fn read_json<T: DeserializeOwned>(mut payload: web::Payload) -> Result<T, HubError> {
    let too_large = || HubError::too_large(format!("the body is over {MAX_API_BODY} bytes"));
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            e => HubError::bad_request(format!("cannot read the body: {e}")),
        })?;
        if body.len() + chunk.len() > MAX_API_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // serde builds a struct from a JSON array too, filling the fields in order: every body of
    // the contract is an object, so anything else is refused before serde sees it.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(HubError::bad_request("the body must be a JSON object"));
    }
    serde_json::from_slice(&body)
        .map_err(|e| HubError::bad_request(format!("invalid JSON body: {e}")))
}

/// Refuses a declared oversize body before reading any of it.
pub(super) fn check_length(req: &HttpRequest) -> Result<(), HubError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(n) if n > MAX_API_BODY => Err(HubError::too_large(format!(
            "the body is over {MAX_API_BODY} bytes"
        ))),
        _ => Ok(()),
    }
}

/// The channel that fills the rest of the path, percent-decoded.
fn path_channel(req: &HttpRequest, prefix: &str) -> Result<String, HubError> {
    let raw = req.path().strip_prefix(prefix).unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| HubError::bad_request("the channel is not valid UTF-8"))?;
    if valid_channel(&decoded) {
        Ok(decoded.into_owned())
    } else {
        Err(HubError::bad_request(format!(
            "invalid channel name `{decoded}`"
        )))
    }
}

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    event_type: Option<String>,
    event_id: Option<String>,
}

#[derive(Serialize)]
struct PublishAnswer<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    event_id: &'a str,
}

impl<'a> PublishAnswer<'a> {
    fn new(channel: &'a str, p: &'a Published) -> Self {
        PublishAnswer {
            channel,
            offset: p.position.offset,
            epoch: &p.position.epoch,
            event_id: &p.event_id,
        }
    }
}

async fn publish_one(app: &AppState, request: PublishRequest) -> Result<Published, HubError> {
    request.validate(app.config.max_publication_bytes)?;
    let channel = request.channel.clone();
    let published = app.engine.publish(request).await?;
    if !published.duplicate {
        app.metrics.published(Source::Api);
    }
    tracing::debug!(
        channel = channel.as_str(),
        event_id = published.event_id.as_str(),
        offset = published.position.offset,
        duplicate = published.duplicate,
        "published by api"
    );
    Ok(published)
}

async fn publish(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, HubError> {
    check_length(&req)?;
    let body: PublishBody = read_json(body).await?;
    let channel = body.channel.clone();
    let published = publish_one(
        &app,
        PublishRequest {
            channel: body.channel,
            data: body.data,
            event_id: body.event_id,
            event_type: body.event_type,
            from: None,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(PublishAnswer::new(&channel, &published)))
}

#[derive(Deserialize)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    event_type: Option<String>,
    event_id: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BroadcastResult<'a> {
    Ok(PublishAnswer<'a>),
    Failed {
        channel: &'a str,
        error: ErrorBody<'a>,
    },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct BroadcastAnswer<'a> {
    results: Vec<BroadcastResult<'a>>,
}

async fn broadcast(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, HubError> {
    check_length(&req)?;
    let body: BroadcastBody = read_json(body).await?;
    if body.channels.is_empty() {
        return Err(HubError::bad_request("`channels` must not be empty"));
    }
    let outcomes = join_all(body.channels.iter().map(|channel| {
        publish_one(
            &app,
            PublishRequest {
                channel: channel.clone(),
                data: body.data.clone(),
                event_id: body.event_id.clone(),
                event_type: body.event_type.clone(),
                from: None,
            },
        )
    }))
    .await;
    let results = body
        .channels
        .iter()
        .zip(&outcomes)
        .map(|(channel, outcome)| match outcome {
            Ok(p) => BroadcastResult::Ok(PublishAnswer::new(channel, p)),
            Err(e) => BroadcastResult::Failed {
                channel,
                error: ErrorBody {
                    code: e.code.as_str(),
                    message: &e.message,
                },
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(BroadcastAnswer { results }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<u64>,
    since_offset: Option<u64>,
    epoch: Option<String>,
}

#[derive(Serialize)]
struct HistoryAnswer<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    publications: &'a [Message],
}

async fn history(req: HttpRequest, app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let channel = path_channel(&req, "/api/history/")?;
    let query = web::Query::<HistoryQuery>::from_query(req.query_string())
        .map_err(|e| HubError::bad_request(format!("invalid query: {e}")))?
        .into_inner();
    let since = match (query.since_offset, query.epoch) {
        (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
        (None, _) => None,
        (Some(_), None) => return Err(HubError::bad_request("`since_offset` needs `epoch`")),
    };
    let cap = app.config.history_size;
    let limit = query
        .limit
        .map_or(cap, |l| usize::try_from(l).unwrap_or(usize::MAX).min(cap));
    let page = app.engine.history(&channel, limit, since.as_ref()).await?;
    Ok(HttpResponse::Ok().json(HistoryAnswer {
        channel: &channel,
        offset: page.position.offset,
        epoch: &page.position.epoch,
        publications: &page.publications,
    }))
}

#[derive(Serialize)]
struct PresenceAnswer<'a> {
    channel: &'a str,
    clients: &'a [ClientInfo],
}

async fn presence(req: HttpRequest, app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let channel = path_channel(&req, "/api/presence/")?;
    let clients = app.engine.presence(&channel).await?;
    Ok(HttpResponse::Ok().json(PresenceAnswer {
        channel: &channel,
        clients: &clients,
    }))
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
}

#[derive(Serialize)]
struct DisconnectAnswer {
    disconnected: usize,
}

async fn disconnect(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, HubError> {
    check_length(&req)?;
    let body: DisconnectBody = read_json(body).await?;
    if body.user.is_empty() {
        return Err(HubError::bad_request("`user` must not be empty"));
    }
    app.engine.disconnect_user(&body.user);
    let disconnected = app
        .hub
        .send(hub::DisconnectUser {
            user: body.user,
            close: Close::Disconnected,
        })
        .await
        .map_err(|_| HubError::internal("hub unavailable"))?;
    Ok(HttpResponse::Ok().json(DisconnectAnswer { disconnected }))
}

#[derive(Serialize)]
struct ChannelEntry {
    channel: String,
    subscribers: usize,
}

#[derive(Serialize)]
struct ChannelsAnswer {
    channels: Vec<ChannelEntry>,
}

async fn channels(app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let mut totals: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let here = local_stats(&app, true).await?.channels;
    for (channel, n) in here.into_iter().chain(app.engine.other_channels().await?) {
        *totals.entry(channel).or_default() += n;
    }
    let channels = totals
        .into_iter()
        .map(|(channel, subscribers)| ChannelEntry {
            channel,
            subscribers,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ChannelsAnswer { channels }))
}

async fn local_stats(app: &AppState, with_channels: bool) -> Result<hub::NodeStats, HubError> {
    app.hub
        .send(hub::Stats { with_channels })
        .await
        .map_err(|_| HubError::internal("hub unavailable"))
}

#[derive(Serialize)]
struct InfoAnswer {
    nodes: Vec<NodeInfo>,
    /// One entry per stream of `HUB_STREAMS`; empty without Redis.
    streams: Vec<StreamInfo>,
}

async fn info(app: web::Data<AppState>) -> Result<HttpResponse, HubError> {
    let stats = local_stats(&app, false).await?;
    let mut nodes = vec![NodeInfo {
        node: app.node_id().to_owned(),
        connections: stats.connections,
        subscriptions: stats.subscriptions,
        uptime_s: app.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }];
    nodes.extend(app.engine.other_nodes().await?);
    let streams = match &app.streams {
        Some(streams) => streams.info().await?,
        None => Vec::new(),
    };
    Ok(HttpResponse::Ok().json(InfoAnswer { nodes, streams }))
}
