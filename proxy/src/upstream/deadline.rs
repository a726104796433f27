//! An agent's response body, cut off at the scrape deadline.
//!
//! The agent bounds its own answer, but an agent that hangs mid-body (a stuck node, a
//! half-dead connection) would otherwise hold the tenant's request and a proxy connection
//! until the client gives up — and a client that sent no scrape timeout may never give up.
//! Past the deadline the body ends with an **error**, never a clean end of stream: the
//! server then aborts the response (no final chunk, no `close_notify`), so a truncated
//! exposition can never pass for a complete one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Boxed error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body did not finish before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("agent body not finished within {0:?}")]
pub struct BodyDeadline(pub Duration);

/// `inner`, failing with [`BodyDeadline`] when it has not ended by its deadline.
pub struct DeadlineBody<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    budget: Duration,
}

impl<B> DeadlineBody<B> {
    /// Bounds `inner` to end within `budget` from now.
    pub fn new(inner: B, budget: Duration) -> Self {
        DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + budget)),
            budget,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyDeadline(this.budget).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn a_stalled_body_fails_at_the_deadline_and_never_ends_cleanly() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"node_load1 0.5\n"))))
            .await
            .expect("send");
        let stream = tokio_stream_from(rx);
        let budget = Duration::from_millis(300);
        let mut body = DeadlineBody::new(StreamBody::new(stream), budget);
        let first = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "node_load1 0.5\n");
        let start = Instant::now();
        let err = body
            .frame()
            .await
            .expect("an error, not the end")
            .expect_err("cut off");
        assert!(err.is::<BodyDeadline>(), "{err}");
        let waited = start.elapsed();
        assert!(
            waited + Duration::from_millis(50) >= budget
                && waited < budget + Duration::from_secs(5),
            "cut off after {waited:?}"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_finished_body_passes_untouched() {
        let body = DeadlineBody::new(Full::new(Bytes::from_static(b"up 1\n")), Duration::ZERO);
        let bytes = body.collect().await.expect("whole").to_bytes();
        assert_eq!(bytes, "up 1\n");
    }

    /// A stream of the channel's items (pending while the channel is empty and open).
    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
