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

/// A read dropped mid-frame (a stream its caller dropped while a chunk was arriving)
/// must not lose the bytes read so far: the next read returns that same frame whole.
#[tokio::test]
async fn a_read_dropped_mid_frame_resumes_with_the_same_frame() {
    use std::io::Write;
    let (rx, tx) = std::io::pipe().unwrap();
    let mut reader = super::super::frame::FrameReader::new(receiver(rx.into()).unwrap(), 1 << 20);
    let frame = Frame {
        id: 7,
        body: Some(Body::Cancel(proto::Cancel {})),
        ..Frame::default()
    };
    let bytes = super::super::frame::encode_frame(&frame).unwrap();
    let mut tx = std::fs::File::from(OwnedFd::from(tx));
    tx.write_all(&bytes[..3]).unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(50), reader.read()).await;
    assert!(cut.is_err(), "no whole frame yet: {cut:?}");
    tx.write_all(&bytes[3..]).unwrap();
    let whole = reader.read().await.unwrap();
    assert_eq!(whole.id, 7);
}
