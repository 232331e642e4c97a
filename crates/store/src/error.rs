use crate::Revision;

/// The result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (get-for-update, update, delete).
    #[error("key {0:?} not found")]
    NotFound(String),
    /// `create` on a key that exists.
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    /// `update`/`delete` with an expected revision that is not the key's current one.
    #[error("key {key:?} was modified: expected revision {expected}, current {current}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The key's current modification revision.
        current: Revision,
    },
    /// A watch from a revision whose history was compacted away.
    #[error("required revision {requested} has been compacted (compacted through {compacted})")]
    Compacted {
        /// The revision the caller asked to watch after.
        requested: Revision,
        /// The newest compacted revision.
        compacted: Revision,
    },
    /// A revision in the future was requested.
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The backend failed (I/O, corruption, lost connection); details are in the message.
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::Backend(err.to_string())
    }
}
