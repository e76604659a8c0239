//! [`Outcome`]: what the telemetry layers read from a successful response — where a
//! unary call ran, or the stream whose end they wait for. A leaf module, so the
//! layers that read it do not depend on each other.

use snakepit_core::{Response, ResponseStream, Served};

/// What a layer can learn from a successful response.
pub trait Outcome {
    /// Where and how long a unary call ran.
    fn served(&self) -> Option<&Served>;
    /// A streaming response, whose outcome is known only when it ends.
    fn as_stream(&mut self) -> Option<&mut ResponseStream> {
        None
    }
}

impl Outcome for Response {
    fn served(&self) -> Option<&Served> {
        Some(&self.served)
    }
}

impl Outcome for ResponseStream {
    fn served(&self) -> Option<&Served> {
        None
    }
    fn as_stream(&mut self) -> Option<&mut ResponseStream> {
        Some(self)
    }
}
