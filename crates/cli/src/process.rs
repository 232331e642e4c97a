//! What every tessera executable does around its command: logging, the TLS
//! crypto provider, the async runtime, the signals that stop it and the exit
//! code. Shared by the `tessera` and `tessera-proxy` binaries (each includes
//! this file as a module), so both start and stop the same way.

use std::future::Future;
use std::process::ExitCode;

/// Logs to stderr, filtered by `TESSERA_LOG` (default `info`).
pub(crate) fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}

/// rustls with the `ring` provider: the build's one TLS stack.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::debug!("a rustls crypto provider was already installed");
    }
}

/// Builds the runtime, runs `command` on it and turns its result into the
/// process's exit status: `Ok(code)` exits with `code` (1 if it does not fit
/// a byte), an error is printed with its causes and exits 1.
pub(crate) fn run<F>(mut builder: tokio::runtime::Builder, command: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<i32>>,
{
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what the agent and kubelet send).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
