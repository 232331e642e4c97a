//! Grouped commits: concurrent writes share one transaction and one fsync.
//!
//! With `synchronous=FULL`, every commit waits for an fsync of the WAL, and
//! that wait, not the SQL, is what a write costs. Writers therefore do not
//! commit on their own: each sends its operation to one writer thread, which
//! takes every operation waiting in the channel (up to [`MAX_BATCH`] or
//! [`MAX_BATCH_BYTES`]), applies them in arrival order in one `IMMEDIATE`
//! transaction, commits once, publishes their events, and only then answers
//! each writer. Durability is unchanged: no write is acknowledged before the
//! fsync that makes it durable.
//!
//! Each operation runs inside its own savepoint and checks its own
//! precondition (exists / revision) against the state the earlier operations
//! of the batch left, exactly as if it had committed alone: one that fails is
//! rolled back to its savepoint and fails alone, takes no revision, and the
//! rest of the batch commits. Only a failed commit fails the whole batch
//! (then none of its writes is on disk, and every writer hears so).
//!
//! A single writer waits for no one: the thread commits whatever is queued as
//! soon as it is free, so batches form only while a commit is in progress.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use rusqlite::{Connection, DropBehavior, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use tracing::{trace, warn};

use super::{META_REVISION, Writer, append_event, load, lock, meta};
use crate::{Error, EventKind, KeyValue, Result, Revision, WatchEvent};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// A batch also closes once its values reach this many bytes (after at least
/// one write), so one transaction's memory stays bounded.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Writes waiting for the writer thread before senders wait too.
const QUEUE: usize = 1024;

/// One write, with the precondition it carries.
#[derive(Debug)]
pub(super) enum Op {
    /// Create `key`; fails when it exists.
    Create { key: String, value: Bytes },
    /// Replace `key` if its modification revision is `expected`.
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    /// Delete `key`, if `expected` is given only at that revision.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Create { key, value } | Op::Update { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
        }
    }
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<KeyValue>>,
}

/// The sending side of the writer thread; dropping it lets the thread finish
/// what is queued and waits for it (so the write connection is closed when
/// the store is gone).
pub(super) struct GroupCommit {
    queue: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// Batches the writer thread has taken from the queue (tests).
    #[cfg(test)]
    pub(super) batches: Arc<std::sync::atomic::AtomicUsize>,
}

impl GroupCommit {
    /// Starts the writer thread on `writer`'s connection.
    pub(super) fn start(writer: Arc<Mutex<Writer>>) -> Result<Self> {
        let (queue, mut requests) = mpsc::channel::<Request>(QUEUE);
        #[cfg(test)]
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        #[cfg(test)]
        let counter = Arc::clone(&batches);
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || {
                // Outside any runtime: blocking_recv is allowed here.
                while let Some(first) = requests.blocking_recv() {
                    let mut bytes = first.op.bytes();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                        match requests.try_recv() {
                            Ok(next) => {
                                bytes += next.op.bytes();
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    #[cfg(test)]
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    commit_batch(&writer, batch);
                }
            })
            .map_err(|err| Error::Backend(format!("starting the sqlite writer thread: {err}")))?;
        Ok(GroupCommit {
            queue: Some(queue),
            thread: Some(thread),
            #[cfg(test)]
            batches,
        })
    }

    /// Applies `op` in the next batch; returns once that batch is durable.
    pub(super) async fn write(&self, op: Op) -> Result<KeyValue> {
        let closed = || Error::Backend("the store was closed".to_owned());
        let queue = self.queue.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Request { op, reply })
            .await
            .map_err(|_| closed())?;
        answer
            .await
            .map_err(|_| Error::Backend("the store's writer thread stopped".to_owned()))?
    }

    /// Writes sent but not yet taken by the writer thread (tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the sqlite writer thread panicked");
        }
    }
}

/// Commits `batch` in one transaction, publishes its events in revision
/// order under the write lock, then answers every writer.
fn commit_batch(writer: &Mutex<Writer>, batch: Vec<Request>) {
    let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
    let count = ops.len();
    let mut writer = lock(writer);
    match apply(&mut writer.conn, ops) {
        Ok(outcomes) => {
            if let Some(last) = outcomes.iter().flatten().map(WatchEvent::revision).max() {
                writer.committed.store(last, Ordering::Release);
            }
            for event in outcomes.iter().flatten() {
                writer.fanout.publish(event);
            }
            drop(writer);
            trace!(writes = count, "committed a batch");
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A writer that stopped waiting is no error: its write is
                // committed all the same.
                let _ = reply.send(outcome.map(|event| event.kv));
            }
        }
        Err(err) => {
            drop(writer);
            warn!(writes = count, error = %err, "a batch of writes failed to commit");
            let message = err.to_string();
            for reply in replies {
                let _ = reply.send(Err(Error::Backend(message.clone())));
            }
        }
    }
}

/// Applies `ops` in one transaction, each in its own savepoint, and commits.
/// Returns each operation's event or the error it failed with alone; `Err`
/// when the transaction itself failed (nothing of it is on disk).
fn apply(conn: &mut Connection, ops: Vec<Op>) -> Result<Vec<Result<WatchEvent>>> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let start = meta(&tx, META_REVISION)?;
    let mut revision = start;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let mut savepoint = tx.savepoint()?;
        match apply_one(&savepoint, op, revision + 1) {
            Ok(event) => {
                savepoint.commit()?;
                revision += 1;
                outcomes.push(Ok(event));
            }
            Err(err) => {
                // Undo whatever the failed write did; the batch goes on.
                savepoint.set_drop_behavior(DropBehavior::Rollback);
                savepoint.finish()?;
                outcomes.push(Err(err));
            }
        }
    }
    if revision != start {
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")?
            .execute([revision])?;
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Checks `op`'s precondition and applies it at `revision`.
fn apply_one(conn: &Connection, op: Op, revision: Revision) -> Result<WatchEvent> {
    let event = match op {
        Op::Create { key, value } => {
            if load(conn, &key)?.is_some() {
                return Err(Error::AlreadyExists(key));
            }
            conn.prepare_cached(
                "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(rusqlite::params![key, &value[..], revision])?;
            WatchEvent {
                kind: EventKind::Create,
                kv: KeyValue {
                    key,
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                },
                prev: None,
            }
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(current) = load(conn, &key)? else {
                return Err(Error::NotFound(key));
            };
            if current.mod_revision != expected {
                return Err(Error::Conflict {
                    key,
                    expected,
                    current: current.mod_revision,
                });
            }
            conn.prepare_cached("UPDATE kv SET value = ?2, mod_rev = ?3 WHERE key = ?1")?
                .execute(rusqlite::params![key, &value[..], revision])?;
            WatchEvent {
                kind: EventKind::Update,
                kv: KeyValue {
                    key,
                    value,
                    create_revision: current.create_revision,
                    mod_revision: revision,
                },
                prev: Some(current),
            }
        }
        Op::Delete { key, expected } => {
            let Some(current) = load(conn, &key)? else {
                return Err(Error::NotFound(key));
            };
            if let Some(expected) = expected
                && expected != current.mod_revision
            {
                return Err(Error::Conflict {
                    key,
                    expected,
                    current: current.mod_revision,
                });
            }
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute([&key])?;
            WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: revision,
                    ..current.clone()
                },
                prev: Some(current),
            }
        }
    };
    append_event(conn, &event)?;
    Ok(event)
}
