//! The pipe transport's control calls when the worker dies part way.

use super::*;

/// A dying worker closes its descriptors one by one: the control reply pipe can
/// reach EOF while the request pipe still takes writes. A control call made in that
/// window must fail at once, not wait its whole timeout for a reply nobody reads.
#[tokio::test]
async fn a_control_call_after_the_reader_stopped_fails_at_once() {
    let (ends, [data_in, data_out, control_in, control_out]) = pipes().unwrap();
    let transport = PipeTransport::new(ends, 1 << 20).unwrap();
    drop(control_out); // the reply pipe closes first...
    let _still_open = (data_in, data_out, control_in); // ...the request pipe not yet
                                                       // Let the reader see EOF and stop.
    while lock_pending(&transport.pending).closed.is_none() {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let result = transport.health(Duration::from_secs(30)).await;
    assert!(
        matches!(result, Err(TransportError::Disconnected(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
