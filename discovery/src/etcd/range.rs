//! Reading one key range at one revision, and writing one key in it only if nothing in the
//! range changed since — the optimistic read-modify-write that `lookout tenants` edits with.
//!
//! The guard is a transaction comparing the `mod_revision` of every key in the range with
//! the read's revision (etcd compares each existing key of a range; a range that gained a key
//! fails too) and that of the written key with its own as read (0 when absent, which is how
//! etcd compares a missing key), so a concurrent delete of that key is caught as well. When
//! the guard fails the caller reads again and retries: no edit is lost, and each is checked
//! against the state it lands in.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::client::{bounded, EtcdError, MAX_MESSAGE_BYTES};

/// Keys per page of a read.
const PAGE: i64 = 1000;

/// A key range as read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRead {
    /// The revision of the read.
    pub revision: i64,
    /// Every key of the range with its value.
    pub kvs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every key's `mod_revision`.
    pub mod_revisions: BTreeMap<Vec<u8>, i64>,
}

/// Reads `[start, end)` at one revision, paginated (each page under `timeout`), so the
/// pages form one snapshot however long the read takes.
pub async fn read_range(
    client: &Client,
    start: &[u8],
    end: &[u8],
    timeout: Duration,
) -> Result<RangeRead, EtcdError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut from = start.to_vec();
    let mut read = RangeRead::default();
    loop {
        let mut opts = GetOptions::new().with_range(end.to_vec()).with_limit(PAGE);
        if read.revision > 0 {
            opts = opts.with_revision(read.revision);
        }
        let page = bounded("range read", timeout, kv.get(from.clone(), Some(opts))).await?;
        if read.revision == 0 {
            read.revision = page.header().map_or(0, |h| h.revision());
            if read.revision <= 0 {
                return Err(EtcdError::Protocol("read without a revision".into()));
            }
        }
        for kv in page.kvs() {
            read.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
            read.mod_revisions
                .insert(kv.key().to_vec(), kv.mod_revision());
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(read),
        }
    }
}

/// What to write to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Put this value.
    Put(Vec<u8>),
    /// Delete the key.
    Delete,
}

/// Writes `key` (inside `[start, end)`) only if no key of the range changed after `read`
/// and `key` is as `read` saw it. `Ok(false)`: something changed; read again.
pub async fn write_if_unchanged(
    client: &Client,
    (start, end): (&[u8], &[u8]),
    read: &RangeRead,
    key: &[u8],
    write: Write,
    timeout: Duration,
) -> Result<bool, EtcdError> {
    let op = match write {
        Write::Put(v) => TxnOp::put(key.to_vec(), v, None),
        Write::Delete => TxnOp::delete(key.to_vec(), None),
    };
    let txn = Txn::new()
        .when([
            Compare::mod_revision(start.to_vec(), CompareOp::Less, read.revision + 1)
                .with_range(end.to_vec()),
            Compare::mod_revision(
                key.to_vec(),
                CompareOp::Equal,
                read.mod_revisions.get(key).copied().unwrap_or(0),
            ),
        ])
        .and_then([op]);
    let mut kv = client.kv_client();
    let resp = bounded("guarded write", timeout, kv.txn(txn)).await?;
    Ok(resp.succeeded())
}
