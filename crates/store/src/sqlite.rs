//! The SQLite backend: one database file in WAL mode with `synchronous=FULL`,
//! so a write is on disk before it is acknowledged.
//!
//! Layout:
//! - `kv`: the current value of every key with its create and modification revisions;
//! - `events`: one row per write (the history that watches replay), with the
//!   key's previous revisions, trimmed by [`Store::compact`]. The previous
//!   value is not copied: an update's is the value of the event at its
//!   `prev_mod_rev`, a delete's is its own value, and compaction keeps each
//!   live key's last event (as etcd keeps each key's last version). The previous values let a
//!   filtered watch see an object stop matching, and let a list read the keys
//!   as they were at a past revision (the current rows with the later events
//!   undone);
//! - `meta`: the current revision and the compacted revision. The current
//!   revision is stored explicitly so that it never goes backwards, even when
//!   compaction has removed every event.
//!
//! Writes go through a single connection behind a mutex. Creates, updates
//! and deletes are sent to one writer thread that commits every write waiting
//! at that moment in one `IMMEDIATE` transaction (one fsync for the group),
//! each checked against its own precondition, and acknowledges each only
//! after the commit ([`commit`]). Reads use a small pool of read-only connections, so they see a
//! consistent snapshot and never wait for a write in progress.
//!
//! After a write commits, the writer hands its event to the [`fanout`] while
//! still holding the write lock, so live events are delivered in revision
//! order. A watch subscribes there first, then replays the history from the
//! `events` table (in pages bounded in rows and bytes), then switches to its
//! live queue, dropping what it has already delivered from history. Each
//! watch's live queue is bounded: a watch that falls too far behind loses its
//! queue and catches up from the history table again (subscribe, replay from
//! the last revision it delivered, switch to the new queue), as etcd catches
//! up a slow watcher from its history. Its consumer sees every event once, in
//! order; only compaction past that revision ends it (`Compacted`).
//!
//! Space: the database uses `auto_vacuum=INCREMENTAL` (stores created before
//! are converted by a one-time `VACUUM` when opened). After compaction deletes
//! history, the freed pages are returned to the file system and the WAL is
//! checkpointed and truncated, so the files shrink back to what the current
//! data and the remaining history need. `secure_delete` overwrites deleted
//! rows, so a deleted value does not linger in free space either.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use tracing::{debug, info, warn};

use self::commit::{GroupCommit, Op};
use self::fanout::{End, Fanout, QueueLimits};

use crate::{
    Error, EventKind, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchEvent,
    WatchStream,
};

mod commit;
mod fanout;

/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 4;
/// Reads running at once (more wait for a turn): with [`PAGE_CACHE_KIB`] this
/// bounds the memory SQLite holds, whatever the number of concurrent requests.
const MAX_READERS: usize = 8;
/// Each connection's page cache, in KiB, as a bound: at most `MAX_READERS + 1`
/// connections × 1 MiB. Half SQLite's default: the OS caches the file anyway,
/// a write invalidates every reader's cache in WAL mode, and SQLite allocates
/// with the C library's malloc, which keeps what it freed (issue 14, memory).
const PAGE_CACHE_KIB: i64 = 1024;
/// History events read per query while a watch replays history (small in
/// tests so that paging is exercised by every watch test).
const HISTORY_PAGE: usize = if cfg!(test) { 16 } else { 512 };
/// A history page also ends once its values reach this many bytes (after at
/// least one row), so replaying large values holds little memory.
const HISTORY_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Revisions of history deleted per transaction while compacting.
const COMPACT_BATCH: Revision = 1000;
/// Free pages given back per transaction after compacting (8 MiB of 4 KiB pages).
const VACUUM_BATCH_PAGES: i64 = 2048;
/// How long a connection waits for a lock held by another connection
/// (checkpoints, recovery) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    rev        INTEGER PRIMARY KEY NOT NULL,
    key        TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_create_rev INTEGER,
    prev_mod_rev    INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_key_rev ON events (key, rev);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
";

/// A [`Store`] kept in one SQLite database file.
///
/// Cloning is not supported; share it behind an `Arc` (it is `Send + Sync`).
/// Dropping the store ends every open watch stream with an error item.
pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
    /// Where create, update and delete go: one writer thread that commits
    /// them in groups (see [`commit`]).
    commit: GroupCommit,
    readers: Arc<ReadPool>,
    fanout: Arc<Fanout>,
    /// The revision of the last committed batch, kept by the writer thread:
    /// this process is the store's only writer, so the revision needs no read
    /// transaction (every consistent list from the watch cache asks for it).
    committed: Arc<AtomicI64>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.fanout.close();
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish_non_exhaustive()
    }
}

/// The single write connection and where its events are published.
struct Writer {
    conn: Connection,
    fanout: Arc<Fanout>,
    /// Raised after each commit, before its events are published and its
    /// writers answered (see [`SqliteStore::revision`]).
    committed: Arc<AtomicI64>,
}

/// Read-only connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per read running ([`MAX_READERS`]).
    turns: tokio::sync::Semaphore,
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (and its parent directory)
    /// when missing. This does blocking file I/O; call it at startup or from a
    /// blocking context.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_limits(path, QueueLimits::DEFAULT)
    }

    /// [`SqliteStore::open`] with chosen per-watch queue limits (tests use
    /// tiny ones to exercise the cut-off).
    pub(crate) fn open_with_limits(path: &Path, watch_limits: QueueLimits) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                Error::Backend(format!("creating directory {}: {err}", parent.display()))
            })?;
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before the first table exists (a new file), this is all it takes;
        // an older store is converted below.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend(format!(
                "{}: could not switch to WAL mode (journal mode is {mode:?})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        enable_incremental_vacuum(&conn, path)?;

        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Backend(format!(
                "{}: schema version {version} is newer than this build supports ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        add_previous_value_columns(&tx)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let revision = meta(&tx, META_REVISION)?;
        let compacted = meta(&tx, META_COMPACTED)?;
        tx.commit()?;

        // Read connections reopen the file by path; make it independent of the
        // working directory.
        let path = std::fs::canonicalize(path)
            .map_err(|err| Error::Backend(format!("resolving {}: {err}", path.display())))?;
        info!(path = %path.display(), revision, compacted, "opened sqlite store");

        let fanout = Arc::new(Fanout::new(watch_limits));
        let committed = Arc::new(AtomicI64::new(revision));
        let writer = Arc::new(Mutex::new(Writer {
            conn,
            fanout: Arc::clone(&fanout),
            committed: Arc::clone(&committed),
        }));
        Ok(SqliteStore {
            commit: GroupCommit::start(Arc::clone(&writer))?,
            writer,
            readers: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
                turns: tokio::sync::Semaphore::new(MAX_READERS),
            }),
            fanout,
            committed,
        })
    }

    /// Runs `f` with the write connection on the blocking thread pool.
    async fn with_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        blocking(move || f(&mut lock(&writer))).await
    }
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = lock(&self.idle).pop() {
            return Ok(conn);
        }
        debug!(path = %self.path.display(), "opening sqlite read connection");
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    /// Runs `f` in one read transaction (one consistent snapshot) on the
    /// blocking thread pool.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let pool = Arc::clone(self);
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| Error::Backend("the store was closed".to_owned()))?;
        blocking(move || {
            let mut conn = pool.take()?;
            let result = read_tx(&mut conn, f);
            pool.give_back(conn);
            result
        })
        .await
    }
}

fn read_tx<T>(conn: &mut Connection, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    // Deferred: the snapshot starts at the first read. Dropping the
    // transaction rolls it back, which is all a read needs.
    let tx = conn.transaction()?;
    f(&tx)
}

/// Locks `mutex`, recovering from poisoning.
///
/// A panic while one of our locks was held cannot leave the guarded state
/// inconsistent: an open rusqlite transaction rolls back when it is dropped
/// during unwinding, and the read pool is only a list of idle connections.
/// Recovering keeps one panicking request from failing the store forever.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned: PoisonError<_>| {
        warn!("recovering a sqlite store lock poisoned by a panic");
        poisoned.into_inner()
    })
}

/// Runs blocking database work off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::Backend(format!("storage task failed: {err}")))?
}

fn meta(tx: &Connection, name: &str) -> Result<Revision> {
    // Cached: every read transaction and every commit asks for the revision,
    // and `query_row` on a string parses the statement on every call.
    tx.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
        .optional()?
        .ok_or_else(|| Error::Backend(format!("meta row {name:?} is missing")))
}

fn load(tx: &Connection, key: &str) -> Result<Option<KeyValue>> {
    let mut stmt = tx.prepare_cached("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1")?;
    let kv = stmt
        .query_row([key], |row| {
            Ok(KeyValue {
                key: key.to_owned(),
                value: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                create_revision: row.get(1)?,
                mod_revision: row.get(2)?,
            })
        })
        .optional()?;
    Ok(kv)
}

/// Schema 1 kept no previous revisions in `events`: add the columns (its
/// existing rows keep NULL, read as "not known").
fn add_previous_value_columns(tx: &Transaction<'_>) -> Result<()> {
    let has: bool = tx
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'prev_mod_rev'")?
        .exists([])?;
    if !has {
        tx.execute_batch(
            "ALTER TABLE events ADD COLUMN prev_create_rev INTEGER;
             ALTER TABLE events ADD COLUMN prev_mod_rev INTEGER;",
        )?;
    }
    Ok(())
}

/// The history columns of an event with its previous value (see the module
/// doc), for `FROM events e` queries.
const EVENT_COLUMNS: &str = "e.rev, e.key, e.kind, e.value, e.create_rev, e.prev_create_rev, e.prev_mod_rev, \
     CASE e.kind WHEN 2 THEN e.value ELSE (SELECT p.value FROM events p WHERE p.rev = e.prev_mod_rev) END";

/// Reads a row selected with [`EVENT_COLUMNS`].
fn event_from_row(row: &rusqlite::Row<'_>) -> Result<WatchEvent> {
    let key: String = row.get(1)?;
    let prev = previous(&key, row.get(7)?, row.get(5)?, row.get(6)?);
    Ok(WatchEvent {
        kind: kind_from_code(row.get(2)?)?,
        kv: KeyValue {
            mod_revision: row.get(0)?,
            key,
            value: Bytes::from(row.get::<_, Vec<u8>>(3)?),
            create_revision: row.get(4)?,
        },
        prev,
    })
}

fn kind_code(kind: &EventKind) -> i64 {
    match kind {
        EventKind::Create => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
    }
}

fn kind_from_code(code: i64) -> Result<EventKind> {
    match code {
        0 => Ok(EventKind::Create),
        1 => Ok(EventKind::Update),
        2 => Ok(EventKind::Delete),
        other => Err(Error::Backend(format!(
            "unknown event kind {other} in history"
        ))),
    }
}

/// Appends `event` to the history (the caller records the revision and commits).
fn append_event(tx: &Connection, event: &WatchEvent) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (rev, key, kind, value, create_rev, prev_create_rev, prev_mod_rev) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        event.kv.mod_revision,
        event.kv.key,
        kind_code(&event.kind),
        &event.kv.value[..],
        event.kv.create_revision,
        event.prev.as_ref().map(|prev| prev.create_revision),
        event.prev.as_ref().map(|prev| prev.mod_revision),
    ])?;
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`,
/// or `None` when there is none (empty prefix, or only `char::MAX`s).
///
/// UTF-8 byte order (what SQLite's BINARY collation compares) equals code
/// point order, so bumping the last character that can be bumped is enough.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.readers.read(move |tx| load(tx, &key)).await
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_owned();
        self.readers
            .read(move |tx| {
                let current = meta(tx, META_REVISION)?;
                if options.revision != 0 && options.revision != current {
                    return list_at(tx, &prefix, options, current);
                }
                let revision = current;
                let mut range = String::from(" WHERE key >= ?1");
                let mut params = vec![Value::Text(prefix.clone())];
                if let Some(upper) = prefix_upper_bound(&prefix) {
                    params.push(Value::Text(upper));
                    range.push_str(&format!(" AND key < ?{}", params.len()));
                }
                if let Some(after) = options.start_after {
                    params.push(Value::Text(after));
                    range.push_str(&format!(" AND key > ?{}", params.len()));
                }
                let range_params = params.clone();
                let mut sql = format!("SELECT key, value, create_rev, mod_rev FROM kv{range}");
                // One row past the limit tells whether there are more.
                let fetch = if options.limit == 0 {
                    -1
                } else {
                    i64::try_from(options.limit.saturating_add(1)).unwrap_or(i64::MAX)
                };
                params.push(Value::Integer(fetch));
                sql.push_str(&format!(" ORDER BY key LIMIT ?{}", params.len()));

                let mut stmt = tx.prepare_cached(&sql)?;
                let mut items = stmt
                    .query_map(rusqlite::params_from_iter(params), |row| {
                        Ok(KeyValue {
                            key: row.get(0)?,
                            value: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                            create_revision: row.get(2)?,
                            mod_revision: row.get(3)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let more = options.limit != 0 && items.len() > options.limit;
                items.truncate(if options.limit == 0 {
                    items.len()
                } else {
                    options.limit
                });
                // Counting keys on the primary-key index reads no values.
                let remaining = if more {
                    let total: i64 = tx
                        .prepare_cached(&format!("SELECT COUNT(*) FROM kv{range}"))?
                        .query_row(rusqlite::params_from_iter(range_params), |row| row.get(0))?;
                    Some(u64::try_from(total).unwrap_or(0).saturating_sub(items.len() as u64))
                } else {
                    None
                };
                Ok(ListResult {
                    items,
                    revision,
                    more,
                    remaining,
                })
            })
            .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let key = key.to_owned();
        self.commit.write(Op::Create { key, value }).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let key = key.to_owned();
        self.commit
            .write(Op::Update {
                key,
                value,
                expected,
            })
            .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let key = key.to_owned();
        self.commit.write(Op::Delete { key, expected }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading history: every event committed after the
        // history snapshot is then certain to arrive in the live queue.
        let live = self.fanout.subscribe(prefix);
        let mut watch = Watch {
            readers: Arc::clone(&self.readers),
            fanout: Arc::clone(&self.fanout),
            prefix: prefix.to_owned(),
            upper: prefix_upper_bound(prefix),
            live,
            cursor: after,
            pending: VecDeque::new(),
            history_done: false,
        };
        // The first page validates `after` (compacted / future) so those
        // errors are returned from `watch` itself.
        watch.next_history_page().await?;
        debug!(prefix, after, "watch started");
        Ok(Box::pin(futures::stream::unfold(
            Some(watch),
            |state| async move {
                let mut watch = state?;
                match watch.next().await {
                    Ok(event) => Some((Ok(event), Some(watch))),
                    Err(err) => Some((Err(err), None)),
                }
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        // In steps, each its own transaction under the write lock, so writes
        // wait for one step at most, not for the whole history.
        let mut removed = 0;
        // The first step also revisits the events earlier compactions kept;
        // later steps only their own batch.
        let mut first = true;
        while let Step::Removed(rows) = self
            .with_writer(move |writer| compact_step(&mut writer.conn, revision, first))
            .await?
        {
            removed += rows;
            first = false;
        }
        if removed == 0 {
            return Ok(());
        }
        info!(revision, removed, "compacted sqlite store history");
        // The compaction is committed; giving the space back is an
        // optimisation that the next compaction retries.
        if let Err(err) = self.reclaim_space().await {
            warn!(error = %err, "could not give compacted space back to the file system");
        }
        Ok(())
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.committed.load(Ordering::Acquire))
    }

    fn local_revision(&self) -> Option<Revision> {
        // Raised only once its batch is durable, so every write acknowledged
        // before this call is at or below it.
        Some(self.committed.load(Ordering::Acquire))
    }
}

/// Converts a store created without `auto_vacuum=INCREMENTAL` (which only
/// takes effect before the first table is created) with a one-time `VACUUM`.
fn enable_incremental_vacuum(conn: &Connection, path: &Path) -> Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    info!(path = %path.display(), "converting the store to incremental auto-vacuum (one-time VACUUM)");
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode != INCREMENTAL {
        return Err(Error::Backend(format!(
            "{}: could not switch to incremental auto-vacuum (auto_vacuum is {mode})",
            path.display()
        )));
    }
    Ok(())
}

/// What one compaction step did.
enum Step {
    /// Deleted this many history rows; there may be more to do.
    Removed(usize),
    /// The history is compacted through the requested revision.
    Done,
}

/// Deletes the next batch of at most [`COMPACT_BATCH`] revisions of history
/// up to `revision` and records the new compacted revision.
fn compact_step(conn: &mut Connection, revision: Revision, revisit_kept: bool) -> Result<Step> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = meta(&tx, META_REVISION)?;
    if revision > current {
        return Err(Error::FutureRevision {
            requested: revision,
            current,
        });
    }
    let compacted = meta(&tx, META_COMPACTED)?;
    if revision <= compacted {
        return Ok(Step::Done);
    }
    let through = revision.min(compacted.saturating_add(COMPACT_BATCH));
    // Keeps, as etcd does, each key's last event at or before `revision`
    // unless it is a delete: a later update of the key points to it for its
    // previous value. A later compaction past such an update removes it
    // (every pass deletes from the start of the table).
    // A batch costs its own rows (and, in a compaction's first step, the
    // events kept before), each checked through `events_key_rev`.
    let from = if revisit_kept { 0 } else { compacted };
    let removed = tx.execute(
        "DELETE FROM events WHERE rev > ?1 AND rev <= ?2 AND (kind = 2 OR EXISTS \
         (SELECT 1 FROM events later WHERE later.key = events.key AND later.rev > events.rev AND later.rev <= ?3))",
        [from, through, revision],
    )?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
        [through],
    )?;
    tx.commit()?;
    Ok(Step::Removed(removed))
}

impl SqliteStore {
    /// Gives the pages that compaction freed back to the file system: moves
    /// them to the end of the file and truncates it (a bounded number of
    /// pages per write-lock hold), then copies the WAL into the database and
    /// truncates the WAL. Every step is durable (`synchronous=FULL`) and runs
    /// under the write lock, between writes.
    async fn reclaim_space(&self) -> Result<()> {
        loop {
            let free = self
                .with_writer(|writer| {
                    // It frees one page per step of the statement (one row
                    // each): step it to the end.
                    writer
                        .conn
                        .prepare_cached(&format!(
                            "PRAGMA incremental_vacuum({VACUUM_BATCH_PAGES})"
                        ))?
                        .query([])?
                        .mapped(|_| Ok(()))
                        .collect::<rusqlite::Result<()>>()?;
                    let free: i64 =
                        writer
                            .conn
                            .pragma_query_value(None, "freelist_count", |row| row.get(0))?;
                    Ok(free)
                })
                .await?;
            if free == 0 {
                break;
            }
        }
        self.with_writer(|writer| {
            // (busy, WAL frames, frames checkpointed); busy means a reader
            // still uses an older snapshot: the WAL is truncated next time.
            let (busy, wal_frames, checkpointed): (i64, i64, i64) =
                writer
                    .conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?;
            let pages: i64 = writer
                .conn
                .pragma_query_value(None, "page_count", |row| row.get(0))?;
            debug!(
                pages,
                wal_busy = busy != 0,
                wal_frames,
                checkpointed,
                "gave compacted space back"
            );
            Ok(())
        })
        .await
    }
}

/// The state of one watch stream.
struct Watch {
    readers: Arc<ReadPool>,
    /// Where `live` came from, to subscribe again after an overflow.
    fanout: Arc<Fanout>,
    prefix: String,
    upper: Option<String>,
    live: fanout::Receiver,
    /// Every matching event with a revision at or below this one has been
    /// delivered (or queued in `pending`).
    cursor: Revision,
    /// History events read but not yet delivered.
    pending: VecDeque<WatchEvent>,
    /// True once the history has been read up to a snapshot taken after
    /// subscribing to the live queue.
    history_done: bool,
}

impl Watch {
    /// The next event, or the error that ends the stream.
    async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if !self.history_done {
                self.next_history_page().await?;
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    let revision = event.revision();
                    if revision <= self.cursor {
                        // Already delivered from history.
                        continue;
                    }
                    self.cursor = revision;
                    return Ok(event);
                }
                Err(End::Overflowed) => {
                    // Its queue is gone; everything after `cursor` is in
                    // the history table (an event is published only after
                    // its commit). Subscribe again before reading, as
                    // `watch` does, so nothing falls between the two.
                    debug!(prefix = %self.prefix, cursor = self.cursor, "watch fell behind its queue; catching up from history");
                    self.live = self.fanout.subscribe(&self.prefix);
                    self.history_done = false;
                }
                Err(End::Closed) => {
                    return Err(Error::Backend("the store was closed".to_owned()));
                }
            }
        }
    }

    /// Reads the next page of history after `cursor` into `pending`.
    async fn next_history_page(&mut self) -> Result<()> {
        let cursor = self.cursor;
        let prefix = self.prefix.clone();
        let upper = self.upper.clone();
        let (page, current) = self
            .readers
            .read(move |tx| {
                let current = meta(tx, META_REVISION)?;
                let compacted = meta(tx, META_COMPACTED)?;
                if cursor < compacted {
                    return Err(Error::Compacted {
                        requested: cursor,
                        compacted,
                    });
                }
                if cursor > current {
                    return Err(Error::FutureRevision {
                        requested: cursor,
                        current,
                    });
                }
                Ok((history_page(tx, cursor, prefix, upper)?, current))
            })
            .await?;
        if page.complete {
            // Everything up to `current` has been read; later events are in
            // the live queue.
            self.history_done = true;
            self.cursor = current;
        } else if let Some(last) = page.events.last() {
            self.cursor = last.revision();
        }
        self.pending.extend(page.events);
        Ok(())
    }
}

/// The previous key-value stored with an event, when it was kept.
fn previous(
    key: &str,
    value: Option<Vec<u8>>,
    create_revision: Option<Revision>,
    mod_revision: Option<Revision>,
) -> Option<KeyValue> {
    Some(KeyValue {
        key: key.to_owned(),
        value: Bytes::from(value?),
        create_revision: create_revision?,
        mod_revision: mod_revision?,
    })
}

/// Lists `prefix` as it was at `options.revision`: the current rows with
/// every later event undone, newest first (a create removes the key, an
/// update or delete puts its previous value back). Costs a scan of the
/// range and of the history since that revision, whatever the limit.
fn list_at(
    tx: &Transaction<'_>,
    prefix: &str,
    options: ListOptions,
    current: Revision,
) -> Result<ListResult> {
    let revision = options.revision;
    let compacted = meta(tx, META_COMPACTED)?;
    if revision < compacted {
        return Err(Error::Compacted {
            requested: revision,
            compacted,
        });
    }
    if revision > current {
        return Err(Error::FutureRevision {
            requested: revision,
            current,
        });
    }
    let upper = prefix_upper_bound(prefix);
    let lower = match &options.start_after {
        Some(after) if after.as_str() >= prefix => after.clone(),
        _ => prefix.to_owned(),
    };
    let in_range = |key: &str| {
        key.starts_with(prefix) && options.start_after.as_deref().is_none_or(|after| key > after)
    };
    let mut keys = std::collections::BTreeMap::new();
    {
        let mut sql = String::from("SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1");
        let mut params = vec![Value::Text(lower.clone())];
        if let Some(upper) = &upper {
            params.push(Value::Text(upper.clone()));
            sql.push_str(" AND key < ?2");
        }
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            if in_range(&key) {
                let kv = KeyValue {
                    key: key.clone(),
                    value: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                    create_revision: row.get(2)?,
                    mod_revision: row.get(3)?,
                };
                keys.insert(key, kv);
            }
        }
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.rev > ?1 AND e.key >= ?2");
    let mut params = vec![Value::Integer(revision), Value::Text(lower)];
    if let Some(upper) = upper {
        params.push(Value::Text(upper));
        sql.push_str(" AND e.key < ?3");
    }
    sql.push_str(" ORDER BY e.rev DESC");
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = rows.next()? {
        let event = event_from_row(row)?;
        let key = event.kv.key;
        if !in_range(&key) {
            continue;
        }
        match event.kind {
            EventKind::Create => {
                keys.remove(&key);
            }
            EventKind::Update | EventKind::Delete => {
                let prev = event.prev.ok_or_else(|| {
                    Error::Backend(format!(
                        "the history after revision {revision} was written without previous values; \
                         it cannot be read at that revision"
                    ))
                })?;
                keys.insert(key, prev);
            }
        }
    }
    let mut items: Vec<KeyValue> = keys.into_values().collect();
    let total = items.len();
    let more = options.limit != 0 && total > options.limit;
    if options.limit != 0 {
        items.truncate(options.limit);
    }
    Ok(ListResult {
        remaining: more.then(|| (total - items.len()) as u64),
        items,
        revision,
        more,
    })
}

/// Up to one page of history events.
struct HistoryPage {
    events: Vec<WatchEvent>,
    /// No matching event after the page's last one (in this snapshot).
    complete: bool,
}

/// Reads the matching events after `cursor`, in revision order, up to
/// [`HISTORY_PAGE`] events or [`HISTORY_PAGE_BYTES`] of values.
fn history_page(
    tx: &Transaction<'_>,
    cursor: Revision,
    prefix: String,
    upper: Option<String>,
) -> Result<HistoryPage> {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.rev > ?1 AND e.key >= ?2");
    let mut params = vec![Value::Integer(cursor), Value::Text(prefix)];
    if let Some(upper) = upper {
        params.push(Value::Text(upper));
        sql.push_str(" AND e.key < ?3");
    }
    sql.push_str(&format!(" ORDER BY e.rev LIMIT {HISTORY_PAGE}"));
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        let event = event_from_row(row)?;
        bytes += event.kv.value.len() + event.prev.as_ref().map_or(0, |prev| prev.value.len());
        events.push(event);
        if events.len() == HISTORY_PAGE || bytes >= HISTORY_PAGE_BYTES {
            return Ok(HistoryPage {
                events,
                complete: false,
            });
        }
    }
    Ok(HistoryPage {
        events,
        complete: true,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;

    use super::*;

    crate::store_conformance_suite!(async {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        (Arc::new(store) as Arc<dyn Store>, dir)
    });

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchEvent>> {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch stream stalled")
    }

    /// Writes that arrive while a commit is in progress are committed together,
    /// each checked against its own precondition: the ones that fail, fail
    /// alone and take no revision; the others commit in arrival order with
    /// consecutive revisions, and the watch sees exactly them, in order.
    // Holding the write lock across awaits is the point: it stalls the writer thread.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_one_commit_and_fail_alone() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        let store = Arc::new(SqliteStore::open(&path).expect("open store"));
        let existing = store.create("/g/existing", b("old")).await.expect("create");
        let mut watch = store.watch("/g/", existing.mod_revision).await.expect("watch");
        let batches_before = store.commit.batches.load(std::sync::atomic::Ordering::SeqCst);

        // Hold the write connection: the writer thread takes the first write
        // and waits for it; every other write queues behind it.
        let held = lock(&store.writer);
        let first = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create("/g/first", b("1")).await })
        };
        let batches = || store.commit.batches.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while batches() == batches_before {
            assert!(std::time::Instant::now() < deadline, "the first write was never taken");
            tokio::task::yield_now().await;
        }
        // Sent one after the other, so the queue order is known.
        let mut handles = Vec::new();
        let ops: Vec<(&str, Option<Revision>)> = vec![
            ("/g/a", None),
            ("/g/existing", None),               // create of an existing key: AlreadyExists
            ("/g/b", None),
            ("/g/existing", Some(999)),          // update at a wrong revision: Conflict
            ("/g/existing", Some(existing.mod_revision)), // update at the right one
            ("/g/c", None),
        ];
        for (i, (key, expected)) in ops.iter().cloned().enumerate() {
            let writer = Arc::clone(&store);
            let handle = tokio::spawn(async move {
                match expected {
                    None => writer.create(key, b(&format!("v{i}"))).await,
                    Some(rev) => writer.update(key, b(&format!("v{i}")), rev).await,
                }
            });
            // Wait until this write is queued before sending the next one.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.commit.queued() < i + 1 {
                assert!(std::time::Instant::now() < deadline, "write {i} never queued");
                tokio::task::yield_now().await;
            }
            handles.push(handle);
        }
        drop(held);

        let first = first.await.expect("join").expect("first write");
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.expect("join"));
        }
        let r = first.mod_revision;
        let kv = |result: &Result<KeyValue>| result.as_ref().expect("committed").clone();
        assert_eq!(kv(&results[0]).mod_revision, r + 1);
        assert_eq!(
            results[1].as_ref().expect_err("exists").to_string(),
            "key \"/g/existing\" already exists"
        );
        assert_eq!(kv(&results[2]).mod_revision, r + 2);
        assert_eq!(
            results[3].as_ref().expect_err("conflict").to_string(),
            format!("key \"/g/existing\" was modified: expected revision 999, current {}", existing.mod_revision)
        );
        assert_eq!(kv(&results[4]).mod_revision, r + 3);
        assert_eq!(kv(&results[4]).value, b("v4"));
        assert_eq!(kv(&results[5]).mod_revision, r + 4);
        // The first write alone, then the six queued ones together.
        assert_eq!(batches() - batches_before, 2);
        assert_eq!(store.revision().await.expect("revision"), r + 4);

        let mut seen = Vec::new();
        for _ in 0..5 {
            let event = next_item(&mut watch).await.expect("event").expect("ok");
            seen.push((event.kind, event.kv.key, event.kv.mod_revision));
        }
        assert_eq!(
            seen,
            vec![
                (EventKind::Create, "/g/first".to_owned(), r),
                (EventKind::Create, "/g/a".to_owned(), r + 1),
                (EventKind::Create, "/g/b".to_owned(), r + 2),
                (EventKind::Update, "/g/existing".to_owned(), r + 3),
                (EventKind::Create, "/g/c".to_owned(), r + 4),
            ]
        );
        drop(watch);

        // And all of it is on disk.
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| panic!("tasks are done"));
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        let keys: Vec<String> = store
            .list("/g/", ListOptions::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["/g/a", "/g/b", "/g/c", "/g/existing", "/g/first"]);
        assert_eq!(store.get("/g/existing").await.expect("get").expect("kv").value, b("v4"));
    }

    #[test]
    fn upper_bound_of_prefixes() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("/a/b/").as_deref(), Some("/a/b0"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(
            prefix_upper_bound("x\u{D7FF}").as_deref(),
            Some("x\u{E000}")
        );
        assert_eq!(prefix_upper_bound("\u{10FFFF}\u{10FFFF}"), None);
    }

    #[tokio::test]
    async fn writer_uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        let writer = lock(&store.writer);
        let mode: String = writer
            .conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let sync: i64 = writer
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("nested/dir/store.db");
        let (revision, expected) = {
            let store = SqliteStore::open(&path).expect("open store");
            let mut expected = Vec::new();
            for i in 0..20 {
                let kv = store
                    .create(&format!("/k/{i:02}"), b(&format!("v{i}")))
                    .await
                    .expect("create");
                expected.push(kv);
            }
            let updated = store
                .update("/k/03", b("updated"), expected[3].mod_revision)
                .await
                .expect("update");
            expected[3] = updated;
            store.delete("/k/07", None).await.expect("delete");
            expected.remove(7);
            (store.revision().await.expect("revision"), expected)
        };
        assert_eq!(revision, 22);

        let store = SqliteStore::open(&path).expect("reopen store");
        assert_eq!(store.revision().await.expect("revision"), revision);
        let listed = store
            .list("/k/", ListOptions::default())
            .await
            .expect("list");
        assert_eq!(listed.revision, revision);
        assert_eq!(listed.items, expected);

        // The history survived too.
        let mut watch = store.watch("/k/", 0).await.expect("watch");
        for rev in 1..=revision {
            let event = next_item(&mut watch)
                .await
                .expect("event")
                .expect("ok event");
            assert_eq!(event.revision(), rev);
        }
        // And the next write continues the revision sequence.
        let kv = store.create("/k/new", b("x")).await.expect("create");
        assert_eq!(kv.mod_revision, revision + 1);
    }

    /// The revision kept in memory is the file's: concurrent writes share
    /// batches in which some fail their precondition and take no revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_revision_in_memory_is_the_committed_one() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).expect("open store"));
        let writes = (0..64).map(|i| {
            let store = Arc::clone(&store);
            // Every key twice: one of each pair fails with "already exists".
            tokio::spawn(async move { store.create(&format!("/k/{}", i % 32), b("v")).await.is_ok() })
        });
        let created = futures::future::join_all(writes).await.into_iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(created, 32);
        let in_memory = store.revision().await.expect("revision");
        assert_eq!(store.local_revision(), Some(in_memory));
        let in_file = store.readers.read(|tx| meta(tx, META_REVISION)).await.expect("read the file's revision");
        assert_eq!(in_memory, 32);
        assert_eq!(in_memory, in_file);
        // A failed write alone takes none either.
        assert!(store.create("/k/0", b("again")).await.is_err());
        assert_eq!(store.revision().await.expect("revision"), in_file);
    }

    #[tokio::test]
    async fn revision_and_compaction_survive_reopen() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        {
            let store = SqliteStore::open(&path).expect("open store");
            for i in 0..5 {
                store
                    .create(&format!("/k/{i}"), b("v"))
                    .await
                    .expect("create");
            }
            // Compacting everything leaves no event to derive the revision from.
            store.compact(5).await.expect("compact");
        }
        let store = SqliteStore::open(&path).expect("reopen store");
        assert_eq!(store.revision().await.expect("revision"), 5);
        assert!(matches!(
            store.watch("", 4).await,
            Err(Error::Compacted {
                requested: 4,
                compacted: 5
            })
        ));
        let mut watch = store
            .watch("", 5)
            .await
            .expect("watch at compacted revision");
        let kv = store.create("/k/next", b("v")).await.expect("create");
        assert_eq!(kv.create_revision, 6);
        let event = next_item(&mut watch)
            .await
            .expect("event")
            .expect("ok event");
        assert_eq!(event.revision(), 6);
    }

    /// Bytes of the database file plus its WAL.
    fn files_size(path: &Path) -> u64 {
        let wal = path.with_extension("db-wal");
        [path, wal.as_path()]
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn files_contain(path: &Path, needle: &[u8]) -> bool {
        let wal = path.with_extension("db-wal");
        [path, wal.as_path()].iter().any(|p| {
            std::fs::read(p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        })
    }

    fn auto_vacuum(store: &SqliteStore) -> i64 {
        lock(&store.writer)
            .conn
            .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
            .expect("auto_vacuum")
    }

    #[tokio::test]
    async fn new_store_uses_incremental_auto_vacuum_and_secure_delete() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        assert_eq!(auto_vacuum(&store), 2, "auto_vacuum=INCREMENTAL");
        let secure: i64 = lock(&store.writer)
            .conn
            .pragma_query_value(None, "secure_delete", |row| row.get(0))
            .expect("secure_delete");
        assert_eq!(secure, 1);
    }

    #[tokio::test]
    async fn an_older_store_is_converted_to_incremental_auto_vacuum() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        {
            // A store as earlier builds created it: no auto-vacuum.
            let conn = Connection::open(&path).expect("open raw");
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| {
                row.get::<_, String>(0)
            })
            .expect("wal");
            conn.execute_batch(SCHEMA).expect("schema");
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .expect("version");
            let mode: i64 = conn
                .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
                .expect("auto_vacuum");
            assert_eq!(mode, 0);
        }
        let kv = {
            let store = SqliteStore::open(&path).expect("open old store");
            assert_eq!(auto_vacuum(&store), 2);
            store.create("/k", b("v")).await.expect("create")
        };
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(auto_vacuum(&store), 2);
        assert_eq!(store.get("/k").await.expect("get"), Some(kv));
    }

    /// A schema-1 store (no previous revisions in `events`) opens, keeps its
    /// history (whose updates have no previous value) and records previous
    /// values for new writes.
    #[tokio::test]
    async fn a_schema_1_store_gains_previous_values() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        {
            let conn = Connection::open(&path).expect("open raw");
            conn.execute_batch(
                "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL);
                 CREATE TABLE events (rev INTEGER PRIMARY KEY NOT NULL, key TEXT NOT NULL, kind INTEGER NOT NULL, value BLOB NOT NULL, create_rev INTEGER NOT NULL);
                 CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('revision', 2), ('compacted', 0);
                 INSERT INTO kv VALUES ('/k', CAST('two' AS BLOB), 1, 2);
                 INSERT INTO events VALUES (1, '/k', 0, CAST('one' AS BLOB), 1), (2, '/k', 1, CAST('two' AS BLOB), 1);
                 PRAGMA user_version = 1;",
            )
            .expect("schema 1");
        }
        let store = SqliteStore::open(&path).expect("open schema 1 store");
        let current = store.get("/k").await.expect("get").expect("exists");
        store.update("/k", b("three"), 2).await.expect("update");
        let mut watch = store.watch("/k", 0).await.expect("watch");
        let mut prevs = Vec::new();
        for _ in 0..3 {
            let event = next_item(&mut watch).await.expect("event").expect("ok");
            prevs.push(event.prev);
        }
        assert_eq!(prevs, vec![None, None, Some(current)]);
    }

    #[tokio::test]
    async fn compaction_gives_the_space_back() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open store");
        let value = Bytes::from(vec![b'v'; 8 * 1024]);
        let mut kv = store.create("/k", value.clone()).await.expect("create");
        for _ in 0..2000 {
            kv = store
                .update("/k", value.clone(), kv.mod_revision)
                .await
                .expect("update");
        }
        let before = files_size(&path);
        assert!(
            before > 16 * 1024 * 1024,
            "2000 history rows of 8 KiB: {before}"
        );
        store.compact(kv.mod_revision).await.expect("compact");
        let after = files_size(&path);
        assert!(
            after < 512 * 1024,
            "after compaction the files hold one value: {before} -> {after} bytes"
        );
        assert_eq!(store.get("/k").await.expect("get"), Some(kv));
    }

    #[tokio::test]
    async fn a_deleted_value_is_gone_from_the_files_after_compaction() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open store");
        let secret = b"c2VjcmV0LXRoYXQtbXVzdC1nbw-marker";
        // Small (in-page) and large (overflow pages) values, and neighbours
        // that stay, so pages are shared.
        for i in 0..20 {
            store
                .create(&format!("/keep/{i:02}"), Bytes::from(vec![b'k'; 300]))
                .await
                .expect("create");
        }
        let mut big = secret.to_vec();
        big.extend(std::iter::repeat_n(b'x', 20_000));
        big.extend_from_slice(secret);
        store
            .create("/s/small", Bytes::from_static(secret))
            .await
            .expect("create");
        store
            .create("/s/big", Bytes::from(big))
            .await
            .expect("create");
        store.delete("/s/small", None).await.expect("delete");
        let deleted = store.delete("/s/big", None).await.expect("delete");
        assert!(files_contain(&path, secret), "history still holds it");
        store.compact(deleted.mod_revision).await.expect("compact");
        assert!(
            !files_contain(&path, secret),
            "a compacted deleted value is not left in the database or the WAL"
        );
        assert_eq!(
            store
                .list("/keep/", ListOptions::default())
                .await
                .expect("list")
                .items
                .len(),
            20
        );
    }

    /// Issue 12: 100k updates of one ~1 KiB object, with compaction as the
    /// server runs it (every tick, to the revision seen at the previous
    /// tick), keep the store under 50 MB. Without compaction the same
    /// writes take well over 100 MB.
    ///
    /// Every write is fsynced, and a disk shared with other builds manages a
    /// few hundred fsyncs a second, so the store lives on tmpfs when there is
    /// one (same files, same code; only the fsyncs are free there).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundred_thousand_updates_stay_under_50_mb() {
        const UPDATES: usize = 100_000;
        const TICK: usize = 10_000;
        const LIMIT: u64 = 50 * 1024 * 1024;
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("create temp dir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).expect("open store");
        let value = |i: usize| {
            let data = format!("{i:0>1000}");
            Bytes::from(format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm","namespace":"default"}},"data":{{"k":"{data}"}}}}"#
            ))
        };
        let started = std::time::Instant::now();
        let mut kv = store
            .create("/registry/configmaps/default/cm", value(0))
            .await
            .expect("create");
        let mut previous_tick = None;
        let mut largest = 0;
        for i in 1..=UPDATES {
            kv = store
                .update(&kv.key, value(i), kv.mod_revision)
                .await
                .expect("update");
            if i % TICK == 0 {
                largest = largest.max(files_size(&path));
                if let Some(revision) = previous_tick {
                    store.compact(revision).await.expect("compact");
                }
                previous_tick = Some(store.revision().await.expect("revision"));
            }
        }
        let elapsed = started.elapsed();
        let end = files_size(&path);
        eprintln!(
            "{UPDATES} updates with compaction every {TICK}: {elapsed:?}; largest {largest} bytes, at the end {end} bytes"
        );
        assert!(largest < LIMIT, "store grew to {largest} bytes");
        assert!(end < LIMIT, "store ended at {end} bytes");
        let current = store.get(&kv.key).await.expect("get").expect("exists");
        assert_eq!(current.value, value(UPDATES));
        // The last tick's history is still there for watches a little behind.
        let mut watch = store
            .watch("/registry/", previous_tick.expect("ticked") - 1)
            .await
            .expect("watch from the last tick");
        assert_eq!(
            next_item(&mut watch)
                .await
                .expect("event")
                .expect("ok")
                .kv
                .value,
            value(UPDATES)
        );
    }

    #[tokio::test]
    async fn large_values_are_replayed_in_pages_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        let total = 9;
        for i in 0..total {
            let value = Bytes::from(vec![b'0' + i; HISTORY_PAGE_BYTES / 3 + 1]);
            store
                .create(&format!("/k/{i}"), value)
                .await
                .expect("create");
        }
        let mut watch = Watch {
            readers: Arc::clone(&store.readers),
            fanout: Arc::clone(&store.fanout),
            prefix: "/k/".to_owned(),
            upper: prefix_upper_bound("/k/"),
            live: store.fanout.subscribe("/k/"),
            cursor: 0,
            pending: VecDeque::new(),
            history_done: false,
        };
        watch.next_history_page().await.expect("page");
        assert_eq!(watch.pending.len(), 3, "a page stops at its byte budget");
        for i in 0..total {
            let event = watch.next().await.expect("event");
            assert_eq!(event.kv.value[0], b'0' + i);
        }
    }

    /// A store whose watches may queue 4 events, and a watch of `/k/` from
    /// the start that is not read while `/k/0`..`/k/9` (revisions 1..=10)
    /// are written: the fifth event overflows its queue.
    async fn a_watch_ten_writes_behind(dir: &tempfile::TempDir) -> (SqliteStore, WatchStream) {
        let limits = QueueLimits {
            events: 4,
            bytes: usize::MAX,
        };
        let store = SqliteStore::open_with_limits(&dir.path().join("store.db"), limits).expect("open store");
        let watch = store.watch("/k/", 0).await.expect("watch");
        for i in 0..10 {
            store
                .create(&format!("/k/{i}"), b("v"))
                .await
                .expect("create");
        }
        (store, watch)
    }

    #[tokio::test]
    async fn a_lagging_watch_catches_up_from_history() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (store, mut watch) = a_watch_ten_writes_behind(&dir).await;
        for i in 0..10 {
            let event = next_item(&mut watch).await.expect("an event").expect("no error");
            assert_eq!(
                (event.kv.key.as_str(), event.revision()),
                (format!("/k/{i}").as_str(), i + 1),
                "every event once, in order"
            );
        }
        assert_eq!(
            store.fanout.subscribers(),
            1,
            "the overflowed subscription is replaced, not added to"
        );
        let live = store.create("/k/10", b("v")).await.expect("create");
        let event = next_item(&mut watch).await.expect("an event").expect("no error");
        assert_eq!(event.revision(), live.mod_revision, "and it is live again");
    }

    #[tokio::test]
    async fn a_lagging_watch_whose_history_is_compacted_ends_with_compacted() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (store, mut watch) = a_watch_ten_writes_behind(&dir).await;
        store.compact(8).await.expect("compact");
        match next_item(&mut watch).await {
            Some(Err(Error::Compacted {
                requested: 0,
                compacted: 8,
            })) => {}
            other => panic!("expected Compacted after revision 0, got {other:?}"),
        }
        assert!(
            next_item(&mut watch).await.is_none(),
            "stream ends after the error"
        );
    }

    #[tokio::test]
    async fn dropping_the_store_ends_watches() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        store.create("/k", b("v")).await.expect("create");
        let mut watch = store.watch("", 0).await.expect("watch");
        drop(store);
        let event = next_item(&mut watch)
            .await
            .expect("event")
            .expect("ok event");
        assert_eq!(event.revision(), 1);
        assert!(matches!(
            next_item(&mut watch).await,
            Some(Err(Error::Backend(_)))
        ));
        assert!(next_item(&mut watch).await.is_none());
    }

    #[tokio::test]
    async fn long_history_is_replayed_in_pages() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
        let total = i64::try_from(HISTORY_PAGE * 5 + 3).expect("fits");
        // One key updated over and over, plus a sibling key the watch must skip.
        let mut kv = store.create("/p/k", b("0")).await.expect("create");
        store.create("/q/k", b("0")).await.expect("create");
        for i in 1..total {
            kv = store
                .update("/p/k", b(&i.to_string()), kv.mod_revision)
                .await
                .expect("update");
        }
        let mut watch = store.watch("/p/", 0).await.expect("watch");
        let mut last = 0;
        for i in 0..total {
            let event = next_item(&mut watch)
                .await
                .expect("event")
                .expect("ok event");
            assert!(event.revision() > last);
            last = event.revision();
            assert_eq!(event.kv.key, "/p/k");
            assert_eq!(event.kv.value, b(&i.to_string()));
        }
        let live = store
            .update("/p/k", b("live"), kv.mod_revision)
            .await
            .expect("update");
        let event = next_item(&mut watch)
            .await
            .expect("event")
            .expect("ok event");
        assert_eq!(event.kv, live);
    }
}
