//! The client side: the current token of a rotating token file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Reading the token file failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("token file {0} is empty")]
    Empty(PathBuf),
}

/// Holds the current content of a token file and follows its changes.
///
/// Projected token files are replaced atomically (written beside, then
/// renamed), so each read sees a whole token. The file is checked every
/// `interval` (seed 001 advises re-reading every 5 minutes; checking a file's
/// metadata is cheap, so tessera checks every second by default) and re-read
/// when its modification time, size or inode changes.
#[derive(Clone)]
pub struct TokenFile {
    path: PathBuf,
    current: Arc<RwLock<Arc<str>>>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

fn read(path: &Path) -> Result<Arc<str>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty(path.to_owned()));
    }
    Ok(Arc::from(token))
}

impl TokenFile {
    /// Reads the file now and follows it with the default 1 s check interval.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, TokenFileError> {
        Self::open_with_interval(path, Duration::from_secs(1))
    }

    /// Reads the file now and checks it for changes every `interval`
    /// (needs a tokio runtime; the follower stops when every clone is dropped).
    pub fn open_with_interval(path: impl Into<PathBuf>, interval: Duration) -> Result<Self, TokenFileError> {
        let path = path.into();
        // Stamp before reading: a change between the two is then seen as a change.
        let mut last = stamp(&path);
        let file = Self { current: Arc::new(RwLock::new(read(&path)?)), path };
        let weak = Arc::downgrade(&file.current);
        let path = file.path.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(current) = weak.upgrade() else { return };
                let now = stamp(&path);
                if now != last {
                    match read(&path) {
                        Ok(token) => {
                            *current.write().unwrap_or_else(|p| p.into_inner()) = token;
                            last = now;
                            tracing::debug!(path = %path.display(), "token file changed");
                        }
                        // Keep the last good token; the writer may be mid-rotation.
                        Err(e) => tracing::warn!(error = %e, "re-reading the token file failed"),
                    }
                }
            }
        });
        Ok(file)
    }

    /// The current token.
    pub fn token(&self) -> Arc<str> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_atomic_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let file = TokenFile::open_with_interval(&path, Duration::from_millis(10)).unwrap();
        assert_eq!(&*file.token(), "one");
        let tmp = dir.path().join(".token.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        // Bounded wait for the follower task (it checks every 10 ms).
        for _ in 0..500 {
            if &*file.token() == "two" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("token file change not seen");
    }

    #[tokio::test]
    async fn missing_or_empty_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(TokenFile::open(dir.path().join("nope")), Err(TokenFileError::Read { .. })));
        std::fs::write(dir.path().join("empty"), " \n").unwrap();
        assert!(matches!(TokenFile::open(dir.path().join("empty")), Err(TokenFileError::Empty(_))));
    }
}
