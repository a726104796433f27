//! Following an etcd watch stream, as the inventory source and the mirror both do: the ways a
//! read-and-watch round ends, and the batches watch responses are applied in.

use etcd_client::{WatchResponse, WatchStream};
use futures_util::FutureExt;

use super::client::EtcdError;

/// Watch responses applied before publishing, at most, when many are waiting.
pub(super) const MAX_BATCH: usize = 1024;

/// Why one read-and-watch round ended.
pub(super) enum End {
    /// The watch's start revision was compacted away: read again at once.
    Compacted(i64),
    /// Anything else: record, back off, read again.
    Failed(EtcdError),
}

impl From<EtcdError> for End {
    fn from(e: EtcdError) -> Self {
        End::Failed(e)
    }
}

/// Waits for the next watch response, then takes those already waiting (up to
/// [`MAX_BATCH`] in all), handing each to `apply` in order. Ends the round when the stream
/// ends or fails, when the watch's start revision was compacted away, or when etcd cancels
/// the watch.
pub(super) async fn next_batch(
    stream: &mut WatchStream,
    mut apply: impl FnMut(&WatchResponse),
) -> Result<(), End> {
    // No timeout: HTTP/2 keep-alive pings end the stream if etcd goes silent.
    let mut next = Some(stream.message().await);
    let mut batch = 0;
    while let Some(msg) = next.take() {
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(End::Failed(EtcdError::Protocol(
                    "watch stream ended".into(),
                )))
            }
            Err(e) => return Err(End::Failed(e.into())),
        };
        if resp.compact_revision() > 0 {
            return Err(End::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            let why = format!("watch canceled: {}", resp.cancel_reason());
            return Err(End::Failed(EtcdError::Protocol(why)));
        }
        apply(&resp);
        batch += 1;
        if batch < MAX_BATCH {
            next = stream.message().now_or_never();
        }
    }
    Ok(())
}
