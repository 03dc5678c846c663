//! One webhook request: signed, timed, judged. What an attempt's result means for its batch
//! (delivered, tried again later, given up) is decided here too, with its log line and its
//! count, so both engines report attempts alike. Knows nothing about where queues live.

use std::sync::Arc;
use std::time::Duration;

use super::batch::{redacted, retry_delay, Batch};
use super::sign::signature;
use crate::metrics::Metrics;

/// Why an attempt failed; its `Display` is the dead letter's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The receiver answered, but not with a 2xx.
    Status(u16),
    /// No answer within `HUB_WEBHOOK_TIMEOUT_S`.
    Timeout(Duration),
    /// No answer at all: refused, reset, DNS, TLS.
    Connection(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::Timeout(after) => write!(f, "timeout after {} s", after.as_secs_f64()),
            Failure::Connection(why) => f.write_str(why),
        }
    }
}

/// What becomes of a batch after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try the same batch again after this wait.
    Retry {
        after: Duration,
        reason: String,
    },
    /// That was the last attempt: the events go to the dead letters.
    GiveUp {
        reason: String,
    },
}

/// Makes the requests: one HTTP client (its connection pool shared by every URL), the secret
/// that signs them, and the timeout that judges them.
pub struct Sender {
    client: reqwest::Client,
    secret: Vec<u8>,
    timeout: Duration,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub fn new(
        secret: Vec<u8>,
        timeout: Duration,
        max_attempts: u32,
        metrics: Arc<Metrics>,
    ) -> Result<Sender, String> {
        let client = http_client(timeout)?;
        Ok(Sender {
            client,
            secret,
            timeout,
            max_attempts: max_attempts.max(1),
            metrics,
        })
    }

    /// One `POST` of `batch` to `url`, with a fresh timestamp and signature.
    pub async fn attempt(&self, url: &str, batch: &Batch) -> Result<(), Failure> {
        let body = batch.body();
        let timestamp = crate::clock::unix_seconds();
        let request = self
            .client
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Hub-Timestamp", timestamp.to_string())
            .header(
                "X-Hub-Signature",
                signature(&self.secret, timestamp, body.as_bytes()),
            )
            .header("X-Hub-Delivery", &batch.delivery)
            .body(body)
            .send();
        // The whole exchange up to the status line, connecting included, within the timeout;
        // the response body is not waited for.
        let result = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(Failure::Timeout(self.timeout)),
            Ok(Err(e)) if e.is_timeout() => Err(Failure::Timeout(self.timeout)),
            Ok(Err(e)) => Err(Failure::Connection(error_text(e))),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(Failure::Status(response.status().as_u16())),
        };
        self.metrics.webhook_request(match &result {
            Ok(()) => "ok",
            Err(Failure::Timeout(_)) => "timeout",
            Err(_) => "error",
        });
        result
    }

    /// What follows attempt number `attempt` (from 1) of `batch`, logged: a failed attempt
    /// that will be retried at `warn`, the last one at `error` (events are set aside: an
    /// operator should look).
    pub fn judge(
        &self,
        url: &str,
        batch: &Batch,
        attempt: u32,
        result: Result<(), Failure>,
    ) -> Outcome {
        let failure = match result {
            Ok(()) => return Outcome::Delivered,
            Err(failure) => failure,
        };
        let reason = failure.to_string();
        if attempt >= self.max_attempts {
            tracing::error!(
                url = %redacted(url),
                delivery = %batch.delivery,
                events = batch.events.len(),
                attempts = attempt,
                reason = %reason,
                "webhook batch given up: its events go to the dead letters"
            );
            return Outcome::GiveUp { reason };
        }
        let after = retry_delay(attempt);
        tracing::warn!(
            url = %redacted(url),
            delivery = %batch.delivery,
            attempt,
            error = %reason,
            next_retry_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            "webhook attempt failed"
        );
        Outcome::Retry { after, reason }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// The HTTP client, verifying https against Mozilla's roots (bundled: the release image has
/// no CA certificates of its own) and the system's, `SSL_CERT_FILE`'s included (for a
/// private CA).
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    // reqwest is built without a crypto provider of its own (no aws-lc, so no cmake): it
    // takes the process default, which must exist before a client is built. Another part of
    // the process may have installed one already; that one serves as well. rustls 0.23.48
    // deprecates its ring provider for lacking post-quantum key exchange; ring is the
    // project's choice all the same.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok());
    reqwest::Client::builder()
        .tls_certs_merge(bundled)
        .connect_timeout(timeout)
        // A redirect would turn the POST into a GET elsewhere: a 3xx is a failed attempt.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("realtime-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {}", error_text(e)))
}

/// An HTTP client error as text: the error and its causes, without the URL (which may carry a
/// password, and which every log line names already).
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
