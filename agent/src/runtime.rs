//! The node's container runtime: containerd over its gRPC socket (containerd-client). Today: finding it and
//! its version for the inventory.

use std::path::Path;
use std::time::Duration;

/// containerd's version (`1.6.20~ds1`), or why it could not be asked.
pub async fn containerd_version(socket: &Path) -> Result<String, String> {
    let ask = async {
        let client = containerd_client::Client::from_path(socket)
            .await
            .map_err(|e| format!("cannot connect to containerd at {}: {e}", socket.display()))?;
        let reply = client.version().version(()).await.map_err(|e| {
            format!(
                "containerd at {} did not answer its version: {}",
                socket.display(),
                e.message()
            )
        })?;
        Ok(reply.into_inner().version)
    };
    tokio::time::timeout(Duration::from_secs(3), ask)
        .await
        .map_err(|_| {
            format!(
                "containerd at {} did not answer within 3 s",
                socket.display()
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let err = containerd_version(Path::new("/nonexistent/containerd.sock"))
            .await
            .unwrap_err();
        assert!(err.contains("/nonexistent/containerd.sock"), "{err}");
    }
}
