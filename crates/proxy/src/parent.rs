//! Dying with the agent (`--parent-pid`).
//!
//! The agent that started the proxy may be killed outright (SIGKILL, OOM):
//! it then has no chance to stop its proxy, which would keep the pod's
//! address and ports and serve with a certificate nobody renews the pod
//! for. Linux's parent-death signal (`PR_SET_PDEATHSIG`) makes the kernel
//! send SIGKILL to the proxy the moment its parent goes. The signal is set
//! after the fork, so a parent that died in between is caught by comparing
//! the current parent with the one named on the command line.

/// Why the proxy refuses to start under `--parent-pid`.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The parent-death signal could not be set.
    #[error("setting the parent-death signal: {0}")]
    Prctl(std::io::Error),
    /// The named parent is not (or no longer) this process's parent.
    #[error("the parent process {expected} is gone (the parent is now {actual})")]
    Gone {
        /// `--parent-pid`.
        expected: u32,
        /// The current parent (1 or a subreaper once the parent died).
        actual: i32,
    },
}

/// Arranges for SIGKILL when the parent dies; fails when `parent` is not
/// the current parent (it already died: the caller should exit).
#[cfg(target_os = "linux")]
pub fn die_with_parent(parent: u32) -> Result<(), ParentError> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::KILL)).map_err(|e| ParentError::Prctl(e.into()))?;
    let actual = rustix::process::Pid::as_raw(getppid());
    if u32::try_from(actual).ok() != Some(parent) {
        return Err(ParentError::Gone { expected: parent, actual });
    }
    Ok(())
}

/// Elsewhere there is no parent-death signal: the flag is accepted and only
/// the start-up check is made.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(parent: u32) -> Result<(), ParentError> {
    let actual = i32::try_from(std::os::unix::process::parent_id()).unwrap_or(0);
    if u32::try_from(actual).ok() != Some(parent) {
        return Err(ParentError::Gone { expected: parent, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_that_is_not_ours_is_refused() {
        let ours = std::os::unix::process::parent_id();
        let err = die_with_parent(ours.wrapping_add(1)).unwrap_err();
        assert_eq!(err.to_string(), format!("the parent process {} is gone (the parent is now {ours})", ours.wrapping_add(1)));
    }
}
