//! Projected files, written the way a kubelet writes a volume: below a root
//! directory that the agent's user owns and nobody else can write into, each
//! directory reached with `openat` one name at a time with `O_NOFOLLOW`, each
//! file replaced atomically (a fresh temporary file beside it, synced, renamed
//! over the old one), so readers see the old or the new content, never a mix.
//!
//! A symbolic link planted below the root (by the workload, which runs as the
//! same user, or by anyone who could write there) is never followed: a link
//! where a directory should be is refused, and a link where a file should be
//! is replaced by the file while its target stays untouched.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Why the root was refused or a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The root could not be created or opened.
    #[error("agent root {path}: {source}")]
    RootIo {
        /// The root.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The root is a symbolic link (whoever controls the link controls where tokens go).
    #[error("agent root {path} is a symbolic link: pass the directory itself")]
    RootSymlink {
        /// The root.
        path: PathBuf,
    },
    /// Another user owns the root: they could swap the token files.
    #[error("agent root {path} is owned by uid {owner}, not by the agent's uid {uid}: its owner could replace the files the agent writes")]
    RootOwner {
        /// The root.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The agent's effective uid.
        uid: u32,
    },
    /// Group or others can write into the root.
    #[error("agent root {path} has mode {mode:04o}: group or others can write into it (run `chmod go-w {path}`)")]
    RootWritable {
        /// The root.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link sits where a directory of the layout should be.
    #[error("{path} is a symbolic link: the agent does not follow links below its root")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A relative path with `..`, `.`, an empty or absolute component (the
    /// pod spec validation refuses these first; this is the last line).
    #[error("{path:?} is not a relative path of plain names")]
    NotDescending {
        /// The path.
        path: PathBuf,
    },
    /// Creating, writing or renaming a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// The agent's output root, opened once and checked; every write below it
/// goes through the open directory, never through the path again.
#[derive(Debug)]
pub struct OutputRoot {
    dir: File,
    path: PathBuf,
}

// === impl OutputRoot ===

impl OutputRoot {
    /// Opens `path` (creating it 0700 if missing) as the root. Refuses a root
    /// that is a symbolic link, belongs to another user, or that group or
    /// others can write into.
    pub fn open(path: &Path) -> Result<Self, FilesError> {
        let root_io = |source: std::io::Error| FilesError::RootIo { path: path.to_owned(), source };
        let open = || rustix::fs::openat(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty());
        let fd = match open() {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                create_private_dir(path).map_err(root_io)?;
                open().map_err(|e| root_io(e.into()))?
            }
            Err(Errno::LOOP | Errno::NOTDIR) if is_symlink(rustix::fs::CWD, path) => {
                return Err(FilesError::RootSymlink { path: path.to_owned() });
            }
            Err(e) => return Err(root_io(e.into())),
        };
        let dir = File::from(fd);
        let meta = dir.metadata().map_err(root_io)?;
        let uid = rustix::process::geteuid().as_raw();
        if meta.uid() != uid {
            return Err(FilesError::RootOwner { path: path.to_owned(), owner: meta.uid(), uid });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(FilesError::RootWritable { path: path.to_owned(), mode: meta.mode() & 0o7777 });
        }
        Ok(Self { dir, path: path.to_owned() })
    }

    /// The root as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `rel` below the root with exactly `mode`, creating
    /// missing directories (0755) on the way, replacing the file atomically.
    pub fn write_atomically(&self, rel: &Path, contents: &[u8], mode: u32) -> Result<(), FilesError> {
        let names = plain_names(rel)?;
        let Some((file_name, parents)) = names.split_last() else {
            return Err(FilesError::NotDescending { path: rel.to_owned() });
        };
        let mut shown = self.path.clone();
        let mut opened: Option<File> = None;
        for name in parents {
            shown.push(name);
            let parent = opened.as_ref().unwrap_or(&self.dir);
            let io = |e: Errno| FilesError::Io { path: shown.clone(), source: e.into() };
            match rustix::fs::mkdirat(parent, *name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io(e)),
            }
            let next = match rustix::fs::openat(parent, *name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => File::from(fd),
                Err(Errno::LOOP | Errno::NOTDIR) if is_symlink(parent, *name) => {
                    return Err(FilesError::Symlink { path: shown });
                }
                Err(e) => return Err(io(e)),
            };
            opened = Some(next);
        }
        let dir = opened.as_ref().unwrap_or(&self.dir);
        shown.push(file_name);
        let tmp = format!(".{}.{:016x}.tmp", file_name.to_string_lossy(), rand::random::<u64>());
        let written = write_new(dir, &tmp, contents, mode).and_then(|()| rustix::fs::renameat(dir, &tmp, dir, *file_name).map_err(Into::into));
        if let Err(source) = written {
            let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
            return Err(FilesError::Io { path: shown, source });
        }
        Ok(())
    }
}

/// Creates a new file `name` in `dir` (never following or reusing anything
/// there) with exactly `mode`, writes and syncs it.
fn write_new(dir: &File, name: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut file = File::from(rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?);
    // The umask may have cleared bits the layout wants (0644 for ca.crt); set them exactly.
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn is_symlink(dir: impl rustix::fd::AsFd, name: impl rustix::path::Arg) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// The names of a relative path made only of plain names.
fn plain_names(rel: &Path) -> Result<Vec<&OsStr>, FilesError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(FilesError::NotDescending { path: rel.to_owned() }),
        })
        .collect()
}

/// Creates `dir` (and missing parents) with mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn root() -> (tempfile::TempDir, OutputRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let root = OutputRoot::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn replaces_with_exact_mode() {
        let (dir, root) = root();
        let rel = Path::new("sub/token");
        root.write_atomically(rel, b"one", 0o600).unwrap();
        root.write_atomically(rel, b"two", 0o644).unwrap();
        let path = dir.path().join(rel);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o644);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn creates_a_missing_root_private() {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("agent/root");
        OutputRoot::open(&path).unwrap();
        assert_eq!(mode(&path), 0o700);
    }

    #[test]
    fn a_symlinked_directory_below_the_root_is_refused_not_followed() {
        let (dir, root) = root();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/run")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("var/run/secrets")).unwrap();
        let err = root.write_atomically(Path::new("var/run/secrets/tokens/api-token"), b"jwt", 0o600).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}/var/run/secrets is a symbolic link: the agent does not follow links below its root", dir.path().display())
        );
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing was written through the link");
    }

    #[test]
    fn a_symlink_planted_as_the_file_is_replaced_and_its_target_untouched() {
        let (dir, root) = root();
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(victim.path(), b"precious").unwrap();
        std::fs::create_dir_all(dir.path().join("sa")).unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("sa/token")).unwrap();
        root.write_atomically(Path::new("sa/token"), b"jwt", 0o600).unwrap();
        assert_eq!(std::fs::read(victim.path()).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(dir.path().join("sa/token")).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced by a regular file");
        assert_eq!(std::fs::read(dir.path().join("sa/token")).unwrap(), b"jwt");
    }

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        let (_dir, root) = root();
        for bad in ["../x", "a/../../x", "/etc/passwd", "./x", ""] {
            let err = root.write_atomically(Path::new(bad), b"x", 0o600).unwrap_err();
            assert!(matches!(err, FilesError::NotDescending { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_root_others_can_write_or_that_is_a_link_is_refused() {
        for bad in [0o777, 0o770, 0o702, 0o1777] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(bad)).unwrap();
            let err = OutputRoot::open(dir.path()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "agent root {0} has mode {bad:04o}: group or others can write into it (run `chmod go-w {0}`)",
                    dir.path().display()
                )
            );
        }
        // Readable by others is fine (workloads of other users may read their ca.crt); writable is not.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        OutputRoot::open(dir.path()).unwrap();

        let parent = tempfile::tempdir().unwrap();
        let link = parent.path().join("root");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let err = OutputRoot::open(&link).unwrap_err();
        assert_eq!(err.to_string(), format!("agent root {} is a symbolic link: pass the directory itself", link.display()));
    }

    #[test]
    fn a_root_another_user_owns_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: only root can give a directory to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let err = OutputRoot::open(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "agent root {} is owned by uid 65534, not by the agent's uid 0: its owner could replace the files the agent writes",
                dir.path().display()
            )
        );
    }
}
