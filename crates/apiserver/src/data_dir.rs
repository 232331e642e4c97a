//! The data dir holds every Secret (in `store.db`), the cluster CA key, the
//! token signing keys and a cluster-admin kubeconfig: only the server's own
//! user may reach it. Like sshd's `StrictModes` and PostgreSQL's data-directory
//! check, the server creates it 0700 (and its store file 0600), and refuses to
//! start on one that group or others can access or that another user owns,
//! unless the operator explicitly allows it.

use std::path::{Path, PathBuf};

/// The SQLite store file in the data dir (SQLite adds `-wal` and `-shm` beside it).
pub const STORE_FILE: &str = "store.db";

/// Why the data dir was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file or directory could not be created or inspected.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Group or others have some access to the data dir or the store file.
    #[error(
        "{path} has mode {mode:04o}: the data dir and its store hold every Secret and must not be accessible by group or others \
         (run `chmod -R go= {path}`), or start with --allow-insecure-data-dir"
    )]
    TooOpen {
        /// The data dir or store file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The data dir or store file belongs to another user.
    #[error(
        "{path} is owned by uid {owner}, not by the server's uid {uid} (chown it to the server's user), \
         or start with --allow-insecure-data-dir"
    )]
    WrongOwner {
        /// The data dir or store file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The server's effective uid.
        uid: u32,
    },
}

/// Whether a data dir that others can reach is refused or only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// Refuse to start (the default).
    #[default]
    Refuse,
    /// Start anyway, with a warning (`--allow-insecure-data-dir`).
    Allow,
}

/// Creates the data dir 0700 (and the SQLite store file 0600 when `sqlite`)
/// if missing, then checks that only the server's user can reach either.
/// Nothing is written before the check passes.
///
/// An existing *empty* directory of ours that nobody else can write into is
/// taken over and made 0700, as PostgreSQL's `initdb` does ("fixing
/// permissions on existing directory"): it holds nothing yet, and `mkdir`
/// with the usual umask makes it 0755. One that holds anything is checked.
pub fn prepare(dir: &Path, sqlite: bool, strictness: Strictness) -> Result<(), DataDirError> {
    if !dir.exists() {
        create_private_dir(dir)?;
    } else {
        take_over_if_empty(dir)?;
    }
    check(dir, strictness)?;
    if sqlite {
        let store = dir.join(STORE_FILE);
        // SQLite creates `-wal` and `-shm` with the main file's mode, so a 0600
        // `store.db` made here keeps all three private whatever the umask.
        create_private_file(&store)?;
        for path in [store.clone(), sibling(&store, "-wal"), sibling(&store, "-shm")] {
            if path.exists() {
                check(&path, strictness)?;
            }
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { path: dir.to_owned(), source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io)
}

#[cfg(unix)]
fn take_over_if_empty(dir: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let io = |source| DataDirError::Io { path: dir.to_owned(), source };
    let meta = std::fs::metadata(dir).map_err(io)?;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    // Others could add files to a group- or world-writable directory right after the emptiness check.
    let writable_by_others = meta.mode() & 0o022 != 0;
    if !meta.is_dir() || !ours || writable_by_others || meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    if std::fs::read_dir(dir).map_err(io)?.next().is_none() {
        tracing::info!(dir = %dir.display(), mode = format!("{:04o}", meta.mode() & 0o7777), "fixing permissions on the empty data dir: 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn take_over_if_empty(_dir: &Path) -> Result<(), DataDirError> {
    Ok(())
}

/// Creates an empty `path` with mode 0600 unless it exists.
fn create_private_file(path: &Path) -> Result<(), DataDirError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DataDirError::Io { path: path.to_owned(), source }),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Refuses (or, when allowed, logs) a path that group or others can access or another user owns.
#[cfg(unix)]
fn check(path: &Path, strictness: Strictness) -> Result<(), DataDirError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|source| DataDirError::Io { path: path.to_owned(), source })?;
    let mode = meta.mode() & 0o7777;
    let uid = rustix::process::geteuid().as_raw();
    let problem = if meta.uid() != uid {
        Some(DataDirError::WrongOwner { path: path.to_owned(), owner: meta.uid(), uid })
    } else if mode & 0o077 != 0 {
        Some(DataDirError::TooOpen { path: path.to_owned(), mode })
    } else {
        None
    };
    match (problem, strictness) {
        (None, _) => Ok(()),
        (Some(problem), Strictness::Refuse) => Err(problem),
        (Some(problem), Strictness::Allow) => {
            tracing::warn!(%problem, "starting on an insecure data dir because --allow-insecure-data-dir is set");
            Ok(())
        }
    }
}

#[cfg(not(unix))]
fn check(_path: &Path, _strictness: Strictness) -> Result<(), DataDirError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_a_private_dir_and_store_file() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a/data");
        prepare(&dir, true, Strictness::Refuse).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
        // Idempotent on its own result.
        prepare(&dir, true, Strictness::Refuse).unwrap();
    }

    #[test]
    fn takes_over_an_empty_dir_only_if_nobody_else_can_write_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(dir.path(), true, Strictness::Refuse).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        for bad in [0o777, 0o775, 0o757] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(bad)).unwrap();
            let err = prepare(dir.path(), true, Strictness::Refuse).unwrap_err();
            assert!(matches!(err, DataDirError::TooOpen { mode, .. } if mode == bad), "{bad:o}: {err}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written into a refused dir");
        }
    }

    #[test]
    fn refuses_a_dir_or_store_others_can_read() {
        for bad in [0o755, 0o750, 0o701, 0o710, 0o777] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("admin.kubeconfig"), b"").unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(bad)).unwrap();
            let err = prepare(dir.path(), true, Strictness::Refuse).unwrap_err();
            assert!(matches!(err, DataDirError::TooOpen { mode, .. } if mode == bad), "{bad:o}: {err}");
            // Nothing was written into the refused dir, and its mode is unchanged.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
            assert_eq!(mode(dir.path()), bad);
            prepare(dir.path(), true, Strictness::Allow).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        for file in [STORE_FILE, "store.db-wal", "store.db-shm"] {
            std::fs::write(dir.path().join(file), b"").unwrap();
            std::fs::set_permissions(dir.path().join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = prepare(dir.path(), true, Strictness::Refuse).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{0} has mode 0644: the data dir and its store hold every Secret and must not be accessible by group or others \
                     (run `chmod -R go= {0}`), or start with --allow-insecure-data-dir",
                    dir.path().join(file).display()
                )
            );
            std::fs::set_permissions(dir.path().join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        prepare(dir.path(), true, Strictness::Refuse).unwrap();
    }

    #[test]
    fn refuses_a_dir_another_user_owns() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: only root can give a directory to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let err = prepare(dir.path(), true, Strictness::Refuse).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is owned by uid 65534, not by the server's uid 0 (chown it to the server's user), or start with --allow-insecure-data-dir",
                dir.path().display()
            )
        );
    }
}
