//! Shutdown: Ctrl-C or SIGTERM asks for a clean stop (finish the batch in
//! flight, flush the producer); a second signal exits at once.
//!
//! The stop signal is `tokio_util`'s [`CancellationToken`]: the pipeline
//! takes a child of the caller's token (so a fatal stage error stops the
//! pipeline without cancelling the caller), and each partition worker a
//! child of the pipeline's.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first Ctrl-C or SIGTERM, and exits the process
/// with status 130 on the second.
pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        for n in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "shutdown requested: finishing the batches in flight (signal again to exit at once)"
                );
                token.cancel();
            } else {
                tracing::warn!("second signal: exiting without flushing");
                std::process::exit(130);
            }
        }
    });
}
