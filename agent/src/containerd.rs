//! The agent's containerd adapter (containerd-client over the node's socket, in the agent's own namespace):
//! write image blobs into the content store, unpack layers with the snapshotter, and create, start, wait for
//! and remove a container from an OCI runtime spec. The call sequence is the one recorded in
//! `../shared/reference/crates.md` for containerd 1.6.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, Container, CreateContainerRequest, CreateRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, GetRequest, InfoRequest, KillRequest,
    ListContainersRequest, StartRequest, WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Request};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::{Descriptor, Mount};
use sha2::Digest as _;

/// Media type of an uncompressed OCI layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const SNAPSHOTTER: &str = "overlayfs";
/// The lease that holds the agent's content and snapshots.
const LEASE: &str = "spacedock-agent";
const CHUNK: usize = 1 << 20;

/// Why a containerd call failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {socket}: {message}")]
    Connect { socket: String, message: String },
    #[error("containerd {call}: {message}")]
    Call { call: &'static str, message: String },
}

fn call(name: &'static str) -> impl Fn(containerd_client::tonic::Status) -> ContainerdError {
    move |s| ContainerdError::Call {
        call: name,
        message: s.message().to_owned(),
    }
}

/// A connection to containerd, scoped to one namespace.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<containerd_client::Client>,
    namespace: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// The chain id of a layer stack from its diff ids (OCI image spec: `sha256(parent + " " + diff_id)`).
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = String::new();
    for diff_id in diff_ids {
        chain = if chain.is_empty() {
            diff_id.clone()
        } else {
            sha256_digest(format!("{chain} {diff_id}").as_bytes())
        };
    }
    chain
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, ContainerdError> {
        let client = containerd_client::Client::from_path(socket)
            .await
            .map_err(|e| ContainerdError::Connect {
                socket: socket.display().to_string(),
                message: e.to_string(),
            })?;
        let c = Containerd {
            client: std::sync::Arc::new(client),
            namespace: namespace.to_owned(),
        };
        // Everything the agent writes or unpacks is held by this lease, so containerd's garbage collector keeps
        // layers that no running container uses yet (the agent removes what it no longer needs itself).
        let lease = CreateRequest {
            id: LEASE.to_owned(),
            labels: HashMap::new(),
        };
        match c.client.leases().create(c.request(lease)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(call("Leases/Create")(s)),
        }
        Ok(c)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        if let Ok(value) = LEASE.parse() {
            request.metadata_mut().insert("containerd-lease", value);
        }
        request
    }

    /// Writes a blob unless the content store has it; returns its descriptor.
    pub async fn write_blob(
        &self,
        media_type: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<Descriptor, ContainerdError> {
        let digest = sha256_digest(bytes);
        let descriptor = Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.clone(),
            size: bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let known = self
            .client
            .content()
            .info(self.request(InfoRequest {
                digest: digest.clone(),
            }))
            .await;
        match known {
            Ok(_) => return Ok(descriptor),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(call("Content/Info")(s)),
        }
        let reference = format!("spacedock-{}", &digest[7..19]);
        let total = bytes.len() as i64;
        let mut messages: Vec<WriteContentRequest> = bytes
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, chunk)| WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.clone(),
                offset: (i * CHUNK) as i64,
                data: chunk.to_vec(),
                labels: HashMap::new(),
            })
            .collect();
        messages.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.clone(),
            offset: total,
            data: Vec::new(),
            labels,
        });
        let mut stream = self
            .client
            .content()
            .write(self.request(tokio_stream::iter(messages)))
            .await
            .map_err(call("Content/Write"))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(call("Content/Write"))?
            .is_some()
        {}
        Ok(descriptor)
    }

    /// Unpacks uncompressed layers into committed snapshots; returns the top chain id.
    pub async fn unpack(&self, layers: &[Descriptor]) -> Result<String, ContainerdError> {
        let mut diff_ids = Vec::new();
        let mut parent = String::new();
        for layer in layers {
            diff_ids.push(layer.digest.clone());
            let chain = chain_id(&diff_ids);
            let stat = StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: chain.clone(),
            };
            match self.client.snapshots().stat(self.request(stat)).await {
                Ok(_) => {
                    parent = chain;
                    continue;
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(call("Snapshots/Stat")(s)),
            }
            let key = format!("extract-{}", &chain[7..19]);
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            let mounts = self
                .client
                .snapshots()
                .prepare(self.request(prepare))
                .await
                .map_err(call("Snapshots/Prepare"))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(layer.clone()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            self.client
                .diff()
                .apply(self.request(apply))
                .await
                .map_err(call("Diff/Apply"))?;
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.clone(),
                key,
                labels: HashMap::new(),
            };
            self.client
                .snapshots()
                .commit(self.request(commit))
                .await
                .map_err(call("Snapshots/Commit"))?;
            parent = chain;
        }
        Ok(parent)
    }

    /// Creates and starts container `id` on the unpacked `chain_id` with `spec` (JSON); stdout and stderr go
    /// to `log`. Returns the task's pid.
    pub async fn start(
        &self,
        id: &str,
        chain_id: &str,
        spec_json: Vec<u8>,
        log: &Path,
    ) -> Result<u32, ContainerdError> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_owned(),
            parent: chain_id.to_owned(),
            labels: HashMap::new(),
        };
        let mounts: Vec<Mount> = self
            .client
            .snapshots()
            .prepare(self.request(prepare))
            .await
            .map_err(call("Snapshots/Prepare"))?
            .into_inner()
            .mounts;
        let container = Container {
            id: id.to_owned(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let create = CreateContainerRequest {
            container: Some(container),
        };
        if let Err(s) = self.client.containers().create(self.request(create)).await {
            self.remove_snapshot(id).await;
            return Err(call("Containers/Create")(s));
        }
        let stdio = format!("file://{}", log.display());
        let task = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdout: stdio.clone(),
            stderr: stdio,
            ..Default::default()
        };
        if let Err(s) = self.client.tasks().create(self.request(task)).await {
            // A failed create leaves the container and snapshot behind: remove them.
            self.remove(id).await;
            return Err(call("Tasks/Create")(s));
        }
        let started = self
            .client
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await;
        match started {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                self.remove(id).await;
                Err(call("Tasks/Start")(s))
            }
        }
    }

    /// The mounts of snapshot `key` (a container's root: with overlayfs, its `upperdir` holds what the
    /// container changed).
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, ContainerdError> {
        let request = MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_owned(),
        };
        Ok(self
            .client
            .snapshots()
            .mounts(self.request(request))
            .await
            .map_err(call("Snapshots/Mounts"))?
            .into_inner()
            .mounts)
    }

    /// Whether the content store holds the blob.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, ContainerdError> {
        let info = InfoRequest {
            digest: digest.to_owned(),
        };
        match self.client.content().info(self.request(info)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call("Content/Info")(s)),
        }
    }

    /// Whether container `id` has a running task.
    pub async fn running(&self, id: &str) -> Result<bool, ContainerdError> {
        let get = GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        match self.client.tasks().get(self.request(get)).await {
            Ok(r) => Ok(r
                .into_inner()
                .process
                .is_some_and(|p| p.status == TaskStatus::Running as i32)),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call("Tasks/Get")(s)),
        }
    }

    /// The ids of the containers in the agent's namespace.
    pub async fn containers(&self) -> Result<Vec<String>, ContainerdError> {
        let list = ListContainersRequest {
            filters: Vec::new(),
        };
        Ok(self
            .client
            .containers()
            .list(self.request(list))
            .await
            .map_err(call("Containers/List"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Waits for the task to exit; returns its exit status.
    pub async fn wait(&self, id: &str) -> Result<u32, ContainerdError> {
        let wait = WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        Ok(self
            .client
            .tasks()
            .wait(self.request(wait))
            .await
            .map_err(call("Tasks/Wait"))?
            .into_inner()
            .exit_status)
    }

    /// Sends a signal to the task.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerdError> {
        let kill = KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
            all: true,
        };
        self.client
            .tasks()
            .kill(self.request(kill))
            .await
            .map_err(call("Tasks/Kill"))?;
        Ok(())
    }

    /// Deletes the task, the container and its snapshot, whatever is left of them.
    pub async fn remove(&self, id: &str) {
        self.delete_task(id).await;
        let _ = self
            .client
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_owned() }))
            .await;
        self.remove_snapshot(id).await;
    }

    /// Deletes the task of an exited container. The shim finishes copying the process's output into its log
    /// file first, so the log is whole once this returns (its exit event can come before the last bytes).
    pub async fn delete_task(&self, id: &str) {
        let _ = self
            .client
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await;
    }

    async fn remove_snapshot(&self, key: &str) {
        let remove = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_owned(),
        };
        let _ = self.client.snapshots().remove(self.request(remove)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        assert_eq!(
            chain_id(&[a.clone(), b.clone()]),
            sha256_digest(format!("{a} {b}").as_bytes())
        );
    }

    /// A one-layer tar with busybox-static as /bin/busybox and /bin/sh.
    fn busybox_layer() -> Vec<u8> {
        let busybox = std::fs::read("/bin/busybox")
            .expect("/bin/busybox: install busybox-static (ops/test.sh does)");
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_mtime(0);
        builder
            .append_data(&mut dir, "bin/", std::io::empty())
            .unwrap();
        let mut file = tar::Header::new_ustar();
        file.set_mode(0o755);
        file.set_size(busybox.len() as u64);
        file.set_mtime(0);
        builder
            .append_data(&mut file, "bin/busybox", busybox.as_slice())
            .unwrap();
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mtime(0);
        builder.append_link(&mut link, "bin/sh", "busybox").unwrap();
        builder.into_inner().unwrap()
    }

    /// Against the test suite's containerd (`SPACEDOCK_TEST_CONTAINERD`, started by ops/test.sh): a blob is
    /// written once, unpacked, and a container runs the Space spec, exits with its status, and leaves nothing.
    #[tokio::test]
    async fn a_container_runs_from_an_unpacked_layer() {
        let socket = std::env::var_os("SPACEDOCK_TEST_CONTAINERD")
            .expect("SPACEDOCK_TEST_CONTAINERD is not set: run the suite through ops/test.sh, which starts containerd");
        let ns = format!("spacedock-test-{}", std::process::id());
        let c = Containerd::connect(Path::new(&socket), &ns).await.unwrap();
        let layer = busybox_layer();
        let descriptor = c
            .write_blob(LAYER_TAR, &layer, HashMap::new())
            .await
            .unwrap();
        assert_eq!(descriptor.digest, sha256_digest(&layer));
        assert_eq!(
            c.write_blob(LAYER_TAR, &layer, HashMap::new())
                .await
                .unwrap()
                .digest,
            descriptor.digest
        );
        let chain = c.unpack(std::slice::from_ref(&descriptor)).await.unwrap();
        assert_eq!(chain, descriptor.digest);

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        let id = format!("run-{}", std::process::id());
        let mut a = spec::tests::allocation("cpu-basic");
        a.id = id.clone();
        a.args = vec![
            "/bin/sh".into(),
            "-c".into(),
            "/bin/busybox id -u; echo SPACE_ID=$SPACE_ID; exit 7".into(),
        ];
        let spec = spec::build(&a).unwrap();
        c.start(&id, &chain, serde_json::to_vec(&spec).unwrap(), &log)
            .await
            .unwrap();
        assert_eq!(c.wait(&id).await.unwrap(), 7);
        c.remove(&id).await;
        let output = std::fs::read_to_string(&log).unwrap();
        assert!(
            output.contains("1000") && output.contains("SPACE_ID=alice/demo"),
            "{output}"
        );
        // Give containerd's garbage collector time to run after the removal: the lease must keep the layer.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // Removed: the same id can be used again, on the same unpacked layer.
        c.start(&id, &chain, serde_json::to_vec(&spec).unwrap(), &log)
            .await
            .unwrap();
        assert_eq!(c.wait(&id).await.unwrap(), 7);
        c.remove(&id).await;
    }
}
