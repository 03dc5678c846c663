//! Close codes and their exact reasons (docs/protocol.md §2.7): the client decides from them whether to
//! reconnect, get a new token, or stop.

use actix_web_actors::ws::{CloseCode, CloseReason};

/// Why the server closes a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Normal,
    GoingAway,
    InvalidUtf8,
    InvalidToken,
    TokenExpired,
    ConnectionLimit,
    OriginNotAllowed,
    /// Not in the contract's table: RFC 6455's code for a broken frame sequence.
    ProtocolError,
    MessageTooBig,
    InternalError,
    SlowConsumer,
    Disconnected,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::GoingAway => 1001,
            Close::InvalidUtf8 => 1007,
            Close::InvalidToken
            | Close::TokenExpired
            | Close::ConnectionLimit
            | Close::OriginNotAllowed => 1008,
            Close::ProtocolError => 1002,
            Close::MessageTooBig => 1009,
            Close::InternalError => 1011,
            Close::SlowConsumer => 4000,
            Close::Disconnected => 4001,
        }
    }

    /// The reason text, exactly as the contract spells it.
    pub fn reason(self) -> &'static str {
        match self {
            Close::Normal => "",
            Close::GoingAway => "going away",
            Close::InvalidUtf8 => "invalid utf-8",
            Close::InvalidToken => "invalid token",
            Close::TokenExpired => "token expired",
            Close::ConnectionLimit => "connection limit",
            Close::OriginNotAllowed => "origin not allowed",
            Close::ProtocolError => "protocol error",
            Close::MessageTooBig => "message too big",
            Close::InternalError => "internal error",
            Close::SlowConsumer => "slow consumer",
            Close::Disconnected => "disconnected",
        }
    }

    /// A short label for logs and metrics (never carries user data).
    pub fn label(self) -> &'static str {
        match self {
            Close::Normal => "normal",
            Close::GoingAway => "going_away",
            Close::InvalidUtf8 => "invalid_utf8",
            Close::InvalidToken => "invalid_token",
            Close::TokenExpired => "token_expired",
            Close::ConnectionLimit => "connection_limit",
            Close::OriginNotAllowed => "origin_not_allowed",
            Close::ProtocolError => "protocol_error",
            Close::MessageTooBig => "message_too_big",
            Close::InternalError => "internal_error",
            Close::SlowConsumer => "slow_consumer",
            Close::Disconnected => "disconnected",
        }
    }

    pub fn to_reason(self) -> CloseReason {
        CloseReason {
            code: CloseCode::from(self.code()),
            description: (!self.reason().is_empty()).then(|| self.reason().to_owned()),
        }
    }

    /// The complete encoded close frame (server to client: unmasked), for writing past a
    /// session's backlog when it is dropped as a slow consumer.
    pub fn encoded_frame(self) -> Vec<u8> {
        let reason = self.reason().as_bytes();
        let mut frame = Vec::with_capacity(4 + reason.len());
        frame.push(0x88); // FIN + opcode 8 (close)
        frame.push((2 + reason.len()) as u8); // reasons are short: always a 7-bit length
        frame.extend_from_slice(&self.code().to_be_bytes());
        frame.extend_from_slice(reason);
        frame
    }
}
