//! A pod's processes die with the agent that runs them.
//!
//! The agent stops the app and its proxy when it shuts down, but an agent
//! killed outright (SIGKILL, the OOM killer) stops nothing: the app would
//! keep running unsupervised, still holding the pod's address, and the proxy
//! would keep serving a certificate nobody renews the pod for. Linux's
//! parent-death signal (`PR_SET_PDEATHSIG`) has the kernel SIGKILL a child
//! when its parent dies.
//!
//! The proxy (this binary) sets it on itself (`tessera proxy --parent-pid`).
//! The app is any program, so the agent starts it through
//! `tessera agent exec --parent-pid PID -- PROGRAM ARGS…`, which sets the
//! signal and then *replaces itself* with the program (`execvp`): same
//! process, same pid, and the signal survives the exec. No `unsafe`
//! `pre_exec` hook is needed.
//!
//! The signal fires when the *thread* that forked the child exits; the agent
//! forks from the thread running `block_on` (the process's main thread) or a
//! runtime worker, both of which live as long as the agent.

use std::os::unix::process::CommandExt as _;

/// `tessera agent exec` (internal: the agent starts apps through it).
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Die (SIGKILL) when this process, the agent, dies.
    #[arg(long)]
    pub parent_pid: u32,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Exit status when the program cannot be run (as a shell: 127 not found, 126 otherwise).
fn exec_failure_code(error: &std::io::Error) -> i32 {
    if error.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

/// Sets the parent-death signal, checks the parent is still there, then
/// replaces this process with the program. Returns only on failure, with
/// the exit status.
pub fn exec(args: &ExecArgs) -> i32 {
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)) {
        eprintln!("error: setting the parent-death signal: {e}");
        return 1;
    }
    // The agent may have died between the fork and the line above.
    let parent = rustix::process::Pid::as_raw(rustix::process::getppid());
    if u32::try_from(parent).ok() != Some(args.parent_pid) {
        eprintln!("error: the agent (pid {}) is gone", args.parent_pid);
        return 1;
    }
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("error: no command");
        return 2;
    };
    // The environment is the one the agent gave this process (a container's).
    let error = std::process::Command::new(program).args(rest).exec();
    eprintln!("error: running {program}: {error}");
    exec_failure_code(&error)
}

/// The agent's side: the command that runs `program args` as a child that
/// dies with this process.
pub fn command(program: &str, args: &[String]) -> std::io::Result<tokio::process::Command> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command.args(["agent", "exec", "--parent-pid", &std::process::id().to_string(), "--", program]).args(args);
    Ok(command)
}
