//! Tests of `apply`: permissions, validation, all-or-nothing refusals, determinism and snapshots.

use proptest::prelude::*;
use spacedock_shared::flavor::Catalog;

use crate::access::hash_secret;
use crate::command::{Actor, KeyValue, NewToken, SpaceSpec};
use crate::state::{Member, RepoKind, Role, Stage};
use crate::{ApplyError, Command, Envelope, State, apply};

const ADMIN: &str = "hf_admin_secret";
const ALICE: &str = "hf_alice_secret";
const ALICE_READ: &str = "hf_alice_read";
const BOB: &str = "hf_bob_secret";

struct Cluster {
    state: State,
    clock: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let mut c = Cluster {
            state: State::default(),
            clock: 1_700_000_000_000,
        };
        c.system(Command::Bootstrap {
            cluster_id: "c1".into(),
            member: Member {
                id: 1,
                api_url: "http://127.0.0.1:8080".into(),
                quic_addr: "127.0.0.1:7443".into(),
            },
            flavors: Catalog::huggingface().iter().cloned().collect(),
            admin_id: "u0".into(),
            admin_token: token("t0", "admin", Role::Admin, ADMIN),
        })
        .unwrap();
        for (i, name) in ["alice", "bob"].iter().enumerate() {
            c.run(
                ADMIN,
                Command::CreateUser {
                    id: format!("u{}", i + 1),
                    name: (*name).into(),
                    fullname: name.to_uppercase(),
                    email: None,
                    is_admin: false,
                },
            )
            .unwrap();
        }
        c.run(
            ADMIN,
            Command::CreateToken {
                token: token("t1", "alice", Role::Write, ALICE),
            },
        )
        .unwrap();
        c.run(
            ADMIN,
            Command::CreateToken {
                token: token("t2", "alice", Role::Read, ALICE_READ),
            },
        )
        .unwrap();
        c.run(
            ADMIN,
            Command::CreateToken {
                token: token("t3", "bob", Role::Write, BOB),
            },
        )
        .unwrap();
        c
    }

    fn envelope(&mut self, token: Option<&str>, command: Command) -> Envelope {
        self.clock += 1000;
        Envelope {
            version: 1,
            at: self.clock,
            request_id: self.clock,
            actor: token.map(|t| Actor {
                token_hash: hash_secret(t),
            }),
            command,
        }
    }

    fn run(&mut self, token: &str, command: Command) -> Result<(), ApplyError> {
        let e = self.envelope(Some(token), command);
        apply(&mut self.state, &e)
    }

    fn system(&mut self, command: Command) -> Result<(), ApplyError> {
        let e = self.envelope(None, command);
        apply(&mut self.state, &e)
    }

    fn create_space(&mut self, token: &str, id: &str, private: bool) -> Result<(), ApplyError> {
        self.run(
            token,
            Command::CreateRepo {
                uid: format!("r-{id}"),
                kind: RepoKind::Space,
                id: id.into(),
                private,
                space: Some(SpaceSpec {
                    sdk: "gradio".into(),
                    ..Default::default()
                }),
            },
        )
    }

    /// Runs a command that must be refused and checks it changed nothing.
    fn refused(&mut self, token: Option<&str>, command: Command) -> ApplyError {
        let before = self.state.clone();
        let e = self.envelope(token, command);
        let err = apply(&mut self.state, &e).unwrap_err();
        assert_eq!(self.state, before, "a refused command changed the state");
        err
    }
}

fn token(id: &str, owner: &str, role: Role, secret: &str) -> NewToken {
    NewToken {
        id: id.into(),
        owner: owner.into(),
        display_name: id.into(),
        role,
        secret_hash: hash_secret(secret),
        expires_at: None,
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        description: None,
    }
}

#[test]
fn bootstrap_only_once() {
    let mut c = Cluster::new();
    let err = c.refused(
        None,
        Command::Bootstrap {
            cluster_id: "again".into(),
            member: Member {
                id: 9,
                api_url: String::new(),
                quic_addr: String::new(),
            },
            flavors: vec![],
            admin_id: "x".into(),
            admin_token: token("tx", "admin2", Role::Admin, "s"),
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)));
}

#[test]
fn space_lifecycle() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/demo", false).unwrap();
    let repo = c.state.repo(RepoKind::Space, "Alice/Demo").unwrap();
    let space = repo.space.as_ref().unwrap();
    assert_eq!(space.subdomain, "alice-demo");
    assert_eq!(space.stage, Stage::NoAppFile);
    assert_eq!(space.hardware_requested, "cpu-basic");

    c.run(
        ALICE,
        Command::RequestHardware {
            id: "alice/demo".into(),
            flavor: "t4-small".into(),
            sleep_time: Some(3600),
        },
    )
    .unwrap();
    c.run(
        ALICE,
        Command::SetSecret {
            id: "alice/demo".into(),
            secret: kv("API_KEY", "s3cret"),
        },
    )
    .unwrap();
    c.run(
        ALICE,
        Command::SetVariable {
            id: "alice/demo".into(),
            variable: kv("MODE", "fast"),
        },
    )
    .unwrap();
    c.run(
        ALICE,
        Command::Pause {
            id: "alice/demo".into(),
        },
    )
    .unwrap();
    let space = c
        .state
        .repo(RepoKind::Space, "alice/demo")
        .unwrap()
        .space
        .clone()
        .unwrap();
    assert_eq!(space.stage, Stage::Paused);
    assert_eq!(space.hardware_requested, "t4-small");
    assert_eq!(space.sleep_time, Some(3600));
    assert_eq!(space.secrets["API_KEY"].value.expose(), "s3cret");
    assert!(
        !format!("{space:?}").contains("s3cret"),
        "secret leaked through Debug"
    );

    c.run(
        ALICE,
        Command::Restart {
            id: "alice/demo".into(),
            factory: true,
        },
    )
    .unwrap();
    let space = c
        .state
        .repo(RepoKind::Space, "alice/demo")
        .unwrap()
        .space
        .clone()
        .unwrap();
    assert_eq!(
        (space.stage, space.restarts, space.factory_restarts),
        (Stage::NoAppFile, 1, 1)
    );

    c.run(
        ALICE,
        Command::DeleteRepo {
            kind: RepoKind::Space,
            id: "alice/demo".into(),
        },
    )
    .unwrap();
    assert!(c.state.repo(RepoKind::Space, "alice/demo").is_none());
    assert!(c.state.subdomains.is_empty());
}

#[test]
fn create_twice_conflicts_with_the_url() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/demo", false).unwrap();
    let before = c.state.clone();
    let err = c.create_space(ALICE, "ALICE/demo", false).unwrap_err();
    assert_eq!(c.state, before);
    let ApplyError::Conflict { url_path, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(url_path.as_deref(), Some("spaces/alice/demo"));
}

#[test]
fn writes_need_rights_on_the_namespace() {
    let mut c = Cluster::new();
    let err = c.create_space(BOB, "alice/theirs", false).unwrap_err();
    assert!(matches!(err, ApplyError::Forbidden(_)), "{err:?}");
    let err = c.create_space(ALICE_READ, "alice/mine", false).unwrap_err();
    assert!(matches!(err, ApplyError::Forbidden(_)), "{err:?}");
    let err = c.create_space(ALICE, "nobody/x", false).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::NotFound {
                what: "namespace",
                ..
            }
        ),
        "{err:?}"
    );
    c.create_space(ADMIN, "alice/by-admin", false).unwrap();
    c.create_space(ALICE, "alice/public", false).unwrap();
    let err = c.refused(
        Some(BOB),
        Command::Pause {
            id: "alice/public".into(),
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)), "{err:?}");
}

#[test]
fn private_spaces_are_not_found_for_outsiders() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/secret-app", true).unwrap();
    let err = c.refused(
        Some(BOB),
        Command::Pause {
            id: "alice/secret-app".into(),
        },
    );
    assert_eq!(err, ApplyError::RepoNotFound("alice/secret-app".into()));
    let err = c.refused(
        Some(BOB),
        Command::DuplicateSpace {
            uid: "r9".into(),
            from: "alice/secret-app".into(),
            to: "bob/copy".into(),
            private: None,
            spec: SpaceSpec::default(),
        },
    );
    assert!(matches!(err, ApplyError::RepoNotFound(_)));
}

#[test]
fn organizations_grant_rights_to_members() {
    let mut c = Cluster::new();
    c.run(
        ALICE,
        Command::CreateOrg {
            id: "o1".into(),
            name: "acme".into(),
            fullname: "Acme".into(),
        },
    )
    .unwrap();
    let err = c.create_space(BOB, "acme/app", false).unwrap_err();
    assert!(matches!(err, ApplyError::Forbidden(_)));
    let err = c.refused(
        Some(BOB),
        Command::SetOrgMember {
            org: "acme".into(),
            user: "bob".into(),
            role: Some(Role::Write),
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)));
    c.run(
        ALICE,
        Command::SetOrgMember {
            org: "acme".into(),
            user: "bob".into(),
            role: Some(Role::Write),
        },
    )
    .unwrap();
    c.create_space(BOB, "acme/app", true).unwrap();
    let err = c.refused(
        Some(ALICE),
        Command::CreateOrg {
            id: "o2".into(),
            name: "bob".into(),
            fullname: String::new(),
        },
    );
    assert!(matches!(err, ApplyError::Conflict { .. }));
}

#[test]
fn revoked_and_expired_tokens_are_refused_at_apply_time() {
    let mut c = Cluster::new();
    let mut expiring = token("t9", "bob", Role::Write, "hf_short");
    expiring.expires_at = Some(c.clock + 5_000);
    c.run(ADMIN, Command::CreateToken { token: expiring })
        .unwrap();
    c.create_space("hf_short", "bob/a", false).unwrap();
    c.clock += 10_000;
    let err = c.create_space("hf_short", "bob/b", false).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Unauthorized(m) if m.contains("expired")),
        "{err:?}"
    );

    c.run(BOB, Command::RevokeToken { id: "t3".into() })
        .unwrap();
    let err = c.create_space(BOB, "bob/c", false).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Unauthorized(m) if m.contains("revoked")),
        "{err:?}"
    );
    let err = c.refused(
        Some("hf_never_issued"),
        Command::Pause { id: "bob/a".into() },
    );
    assert!(matches!(err, ApplyError::Unauthorized(_)));
}

#[test]
fn tokens_cannot_escalate() {
    let mut c = Cluster::new();
    let err = c.refused(
        Some(ALICE),
        Command::CreateToken {
            token: token("t8", "alice", Role::Admin, "x"),
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)));
    let err = c.refused(
        Some(ALICE),
        Command::CreateToken {
            token: token("t8", "bob", Role::Read, "x"),
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)));
    c.run(
        ALICE,
        Command::CreateToken {
            token: token("t8", "alice", Role::Read, "x"),
        },
    )
    .unwrap();
    let err = c.refused(
        Some(ALICE),
        Command::CreateUser {
            id: "u9".into(),
            name: "eve".into(),
            fullname: String::new(),
            email: None,
            is_admin: true,
        },
    );
    assert!(matches!(err, ApplyError::Forbidden(_)));
}

#[test]
fn bad_input_is_refused_whole() {
    let mut c = Cluster::new();
    let bad_spec = SpaceSpec {
        sdk: "gradio".into(),
        variables: vec![kv("GOOD", "1")],
        secrets: vec![kv("1BAD", "x")],
        ..Default::default()
    };
    let err = c.refused(
        Some(ALICE),
        Command::CreateRepo {
            uid: "r1".into(),
            kind: RepoKind::Space,
            id: "alice/x".into(),
            private: false,
            space: Some(bad_spec),
        },
    );
    assert!(
        matches!(&err, ApplyError::Invalid { field, .. } if field == "secrets[0]"),
        "{err:?}"
    );

    c.create_space(ALICE, "alice/x", false).unwrap();
    let cases = [
        Command::RequestHardware {
            id: "alice/x".into(),
            flavor: "h900".into(),
            sleep_time: None,
        },
        Command::SetSleepTime {
            id: "alice/x".into(),
            seconds: -5,
        },
        Command::SetVariable {
            id: "alice/x".into(),
            variable: kv("has space", "v"),
        },
        Command::SetSecret {
            id: "alice/x".into(),
            secret: kv("OK", &"x".repeat(70_000)),
        },
        Command::CreateRepo {
            uid: "r".into(),
            kind: RepoKind::Space,
            id: "alice/bad--name".into(),
            private: false,
            space: None,
        },
        Command::CreateRepo {
            uid: "r".into(),
            kind: RepoKind::Space,
            id: "alice/y".into(),
            private: false,
            space: Some(SpaceSpec {
                sdk: "flask".into(),
                ..Default::default()
            }),
        },
    ];
    for command in cases {
        let name = command.name();
        let err = c.refused(Some(ALICE), command);
        assert!(matches!(err, ApplyError::Invalid { .. }), "{name}: {err:?}");
    }
    let err = c.refused(
        Some(ALICE),
        Command::RequestHardware {
            id: "alice/x".into(),
            flavor: "h900".into(),
            sleep_time: None,
        },
    );
    assert!(err.to_string().contains("unknown flavor `h900`"), "{err}");
}

#[test]
fn duplicate_copies_variables_not_secrets() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/orig", false).unwrap();
    c.run(
        ALICE,
        Command::SetVariable {
            id: "alice/orig".into(),
            variable: kv("MODE", "fast"),
        },
    )
    .unwrap();
    c.run(
        ALICE,
        Command::SetSecret {
            id: "alice/orig".into(),
            secret: kv("TOKEN", "hidden"),
        },
    )
    .unwrap();
    c.run(
        BOB,
        Command::DuplicateSpace {
            uid: "r2".into(),
            from: "alice/orig".into(),
            to: "bob/copy".into(),
            private: None,
            spec: SpaceSpec {
                secrets: vec![kv("OWN", "mine")],
                ..Default::default()
            },
        },
    )
    .unwrap();
    let copy = c
        .state
        .repo(RepoKind::Space, "bob/copy")
        .unwrap()
        .space
        .clone()
        .unwrap();
    assert_eq!(copy.variables["MODE"].value, "fast");
    assert!(!copy.secrets.contains_key("TOKEN"));
    assert!(copy.secrets.contains_key("OWN"));
    assert_eq!(copy.duplicated_from.as_deref(), Some("alice/orig"));
    assert_eq!(copy.sdk, "gradio");
    let err = c.refused(
        Some(BOB),
        Command::DuplicateSpace {
            uid: "r3".into(),
            from: "alice/orig".into(),
            to: "bob/copy".into(),
            private: None,
            spec: SpaceSpec::default(),
        },
    );
    assert!(
        matches!(err, ApplyError::Conflict { url_path: Some(ref p), .. } if p == "spaces/bob/copy")
    );
}

#[test]
fn move_keeps_the_space_and_takes_a_new_subdomain() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/old", false).unwrap();
    c.run(
        ALICE,
        Command::MoveRepo {
            kind: RepoKind::Space,
            from: "alice/old".into(),
            to: "alice/new".into(),
        },
    )
    .unwrap();
    assert!(c.state.repo(RepoKind::Space, "alice/old").is_none());
    let moved = c.state.repo(RepoKind::Space, "alice/new").unwrap();
    assert_eq!(moved.uid, "r-alice/old");
    assert_eq!(moved.space.as_ref().unwrap().subdomain, "alice-new");
    assert_eq!(c.state.subdomains.keys().collect::<Vec<_>>(), ["alice-new"]);
}

#[test]
fn colliding_subdomains_get_a_suffix() {
    let mut c = Cluster::new();
    c.run(
        ADMIN,
        Command::CreateUser {
            id: "u5".into(),
            name: "a-b".into(),
            fullname: String::new(),
            email: None,
            is_admin: false,
        },
    )
    .unwrap();
    c.run(
        ADMIN,
        Command::CreateUser {
            id: "u6".into(),
            name: "a".into(),
            fullname: String::new(),
            email: None,
            is_admin: false,
        },
    )
    .unwrap();
    c.create_space(ADMIN, "a-b/c", false).unwrap();
    c.create_space(ADMIN, "a/b-c", false).unwrap();
    let first = &c
        .state
        .repo(RepoKind::Space, "a-b/c")
        .unwrap()
        .space
        .as_ref()
        .unwrap()
        .subdomain;
    let second = &c
        .state
        .repo(RepoKind::Space, "a/b-c")
        .unwrap()
        .space
        .as_ref()
        .unwrap()
        .subdomain;
    assert_eq!(first, "a-b-c");
    assert!(
        second.starts_with("a-b-c-") && second.len() == 14,
        "{second}"
    );
}

#[test]
fn snapshot_round_trips_and_rejects_garbage() {
    let mut c = Cluster::new();
    c.create_space(ALICE, "alice/demo", true).unwrap();
    c.run(
        ALICE,
        Command::SetSecret {
            id: "alice/demo".into(),
            secret: kv("K", "v"),
        },
    )
    .unwrap();
    let bytes = c.state.to_snapshot().unwrap();
    assert_eq!(State::from_snapshot(&bytes).unwrap(), c.state);
    assert!(State::from_snapshot(&bytes[..bytes.len() / 2]).is_err());
    assert!(State::from_snapshot(b"garbage").is_err());
}

#[test]
fn envelopes_round_trip_and_refuse_newer_versions() {
    let mut c = Cluster::new();
    let e = c.envelope(
        Some(ALICE),
        Command::SetVariable {
            id: "a/b".into(),
            variable: kv("K", "V"),
        },
    );
    assert_eq!(Envelope::decode(&e.encode().unwrap()).unwrap(), e);
    let newer = Envelope { version: 99, ..e };
    assert!(
        Envelope::decode(&newer.encode().unwrap())
            .unwrap_err()
            .contains("version 99")
    );
}

fn any_command() -> impl Strategy<Value = (u8, Command)> {
    let ids = prop_oneof![
        Just("alice/a"),
        Just("alice/b"),
        Just("bob/a"),
        Just("alice/A")
    ];
    let tokens = 0u8..4;
    (tokens, ids, 0u8..9, "[A-Z_]{1,3}", -2i64..5).prop_map(|(t, id, kind, key, n)| {
        let id = id.to_string();
        let command = match kind {
            0 => Command::CreateRepo {
                uid: id.clone(),
                kind: RepoKind::Space,
                id,
                private: n % 2 == 0,
                space: Some(SpaceSpec {
                    sdk: "docker".into(),
                    ..Default::default()
                }),
            },
            1 => Command::DeleteRepo {
                kind: RepoKind::Space,
                id,
            },
            2 => Command::SetSecret {
                id,
                secret: kv(&key, "v"),
            },
            3 => Command::SetVariable {
                id,
                variable: kv(&key, "v"),
            },
            4 => Command::SetSleepTime { id, seconds: n },
            5 => Command::Pause { id },
            6 => Command::Restart { id, factory: n > 0 },
            7 => Command::RequestHardware {
                id,
                flavor: if n > 0 {
                    "t4-small".into()
                } else {
                    "nope".into()
                },
                sleep_time: None,
            },
            _ => Command::MoveRepo {
                kind: RepoKind::Space,
                to: format!("{id}-moved"),
                from: id,
            },
        };
        (t, command)
    })
}

proptest! {
    #[test]
    fn applying_is_deterministic_and_refusals_change_nothing(commands in proptest::collection::vec(any_command(), 1..40)) {
        let mut a = Cluster::new();
        let mut b = Cluster::new();
        let secrets = [ADMIN, ALICE, ALICE_READ, BOB];
        for (t, command) in commands {
            let e = a.envelope(Some(secrets[t as usize]), command);
            let before = a.state.clone();
            let ra = apply(&mut a.state, &e);
            let rb = apply(&mut b.state, &e);
            prop_assert_eq!(&ra, &rb);
            if ra.is_err() {
                prop_assert_eq!(&a.state, &before);
            }
        }
        prop_assert_eq!(a.state.to_snapshot().unwrap(), b.state.to_snapshot().unwrap());
        for (sub, key) in &a.state.subdomains {
            let repo = a.state.repos.get(key).unwrap();
            prop_assert_eq!(&repo.space.as_ref().unwrap().subdomain, sub);
        }
    }
}

mod scheduling {
    use super::*;
    use crate::schedule::{Step, plan};
    use crate::state::{AllocationPhase, Image, NodeState};
    use spacedock_shared::wire::{GpuInfo, ImageConfig, Inventory, Layer};

    pub(super) fn inventory(name: &str, cores: u32, memory_gib: u64, gpus: u32) -> Inventory {
        Inventory {
            name: name.into(),
            labels: vec![],
            cpu_cores: cores,
            memory_bytes: memory_gib << 30,
            disk_free_bytes: 100 << 30,
            kernel: "6.1".into(),
            containerd_version: "1.6".into(),
            driver_version: String::new(),
            cuda_version: String::new(),
            gpus: (0..gpus)
                .map(|i| GpuInfo {
                    index: i,
                    uuid: format!("GPU-{name}-{i}"),
                    name: "Tesla T4".into(),
                    memory_total_bytes: 15360 << 20,
                    mig_mode: String::new(),
                    mig_devices: vec![],
                    compute_capability: "7.5".into(),
                    pci_bus_id: String::new(),
                    power_limit_milliwatts: 70_000,
                    ecc_uncorrected: None,
                    xid_errors: 0,
                    last_xid: None,
                })
                .collect(),
            gpu_note: String::new(),
        }
    }

    /// A cluster with an image and `spaces` Spaces of alice running it on `flavor`.
    pub(super) fn with_spaces(spaces: &[&str], flavor: &str) -> Cluster {
        let mut c = Cluster::new();
        c.run(
            ALICE,
            Command::PutImage {
                image: Image {
                    name: "demo:1".into(),
                    id: "sha256:c0".into(),
                    manifest: "sha256:m0".into(),
                    config: ImageConfig::default(),
                    layers: vec![Layer {
                        digest: "sha256:l1".into(),
                        size: 10,
                    }],
                    created_at: 0,
                },
            },
        )
        .unwrap();
        for id in spaces {
            c.create_space(ALICE, id, false).unwrap();
            c.run(
                ALICE,
                Command::RequestHardware {
                    id: (*id).into(),
                    flavor: flavor.into(),
                    sleep_time: None,
                },
            )
            .unwrap();
            c.run(
                ALICE,
                Command::SetSpaceImage {
                    id: (*id).into(),
                    name: "demo:1".into(),
                    port: 8080,
                    startup_timeout_s: 30,
                },
            )
            .unwrap();
        }
        c
    }

    pub(super) fn add_node(c: &mut Cluster, name: &str, cores: u32, memory_gib: u64, gpus: u32) {
        c.system(Command::RegisterNode {
            inventory: inventory(name, cores, memory_gib, gpus),
        })
        .unwrap();
    }

    /// Runs one scheduler pass the way the leader does; returns the steps.
    pub(super) fn pass(c: &mut Cluster) -> Vec<Step> {
        let steps = plan(&c.state, "");
        for (i, step) in steps.clone().into_iter().enumerate() {
            let id = format!("a{}-{i}", c.clock);
            if let Some(command) = step.into_command(&c.state, id) {
                c.system(command).unwrap();
            }
        }
        steps
    }

    fn placed(c: &Cluster) -> Vec<(String, String)> {
        c.state
            .allocations
            .values()
            .map(|a| (a.space.clone(), a.node.clone()))
            .collect()
    }

    fn stage(c: &Cluster, id: &str) -> (Stage, Option<String>) {
        let s = c
            .state
            .repo(RepoKind::Space, id)
            .unwrap()
            .space
            .as_ref()
            .unwrap();
        (s.stage, s.error_message.clone())
    }

    #[test]
    fn spaces_fill_nodes_and_the_rest_wait_for_capacity_visibly() {
        let mut c = with_spaces(&["alice/a", "alice/b", "alice/c"], "cpu-basic");
        add_node(&mut c, "n1", 4, 32, 0);
        pass(&mut c);
        assert_eq!(placed(&c).len(), 2, "two cpu-basic fit 4 cores, 32 GiB");
        let (st, message) = stage(&c, "alice/c");
        assert_eq!(st, Stage::AppStarting);
        let message = message.unwrap();
        assert!(
            message.contains("waiting for capacity") && message.contains("cpu-basic"),
            "{message}"
        );
        // Said once: the next pass proposes nothing.
        assert_eq!(plan(&c.state, ""), vec![]);
        add_node(&mut c, "n2", 2, 16, 0);
        pass(&mut c);
        assert_eq!(placed(&c).len(), 3);
        assert_eq!(
            stage(&c, "alice/c").1,
            None,
            "a placement clears the message"
        );
    }

    #[test]
    fn a_down_node_gives_its_spaces_to_another() {
        let mut c = with_spaces(&["alice/a"], "cpu-basic");
        add_node(&mut c, "n1", 2, 16, 0);
        pass(&mut c);
        assert_eq!(placed(&c), vec![("space:alice/a".into(), "n1".into())]);
        add_node(&mut c, "n2", 2, 16, 0);
        c.system(Command::SetNodeState {
            name: "n1".into(),
            state: NodeState::Down,
        })
        .unwrap();
        let steps = pass(&mut c);
        assert!(
            matches!(&steps[0], Step::Remove { reason, .. } if reason.contains("n1 is down")),
            "{steps:?}"
        );
        pass(&mut c);
        assert_eq!(placed(&c), vec![("space:alice/a".into(), "n2".into())]);
        // Draining moves it off too, to a ready node.
        c.system(Command::RegisterNode {
            inventory: inventory("n1", 2, 16, 0),
        })
        .unwrap();
        c.system(Command::SetNodeState {
            name: "n2".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        let steps = pass(&mut c);
        assert!(
            matches!(&steps[0], Step::Remove { reason, .. } if reason.contains("n2 is draining")),
            "{steps:?}"
        );
        pass(&mut c);
        assert_eq!(placed(&c), vec![("space:alice/a".into(), "n1".into())]);
    }

    #[test]
    fn reports_drive_the_stage_and_a_restart_replaces_a_failed_allocation() {
        let mut c = with_spaces(&["alice/a"], "cpu-basic");
        add_node(&mut c, "n1", 2, 16, 0);
        pass(&mut c);
        let id = c.state.allocations.keys().next().unwrap().clone();
        let report = |phase, message: &str| Command::ReportAllocation {
            id: id.clone(),
            node: "n1".into(),
            phase,
            message: message.into(),
        };
        c.system(report(AllocationPhase::Running, "")).unwrap();
        assert_eq!(stage(&c, "alice/a").0, Stage::Running);
        // Only the allocation's own node may report on it.
        let err = c.refused(
            None,
            Command::ReportAllocation {
                id: id.clone(),
                node: "n2".into(),
                phase: AllocationPhase::Failed,
                message: "x".into(),
            },
        );
        assert!(matches!(err, ApplyError::NotFound { .. }), "{err}");
        c.system(report(AllocationPhase::Failed, "exited with code 3"))
            .unwrap();
        assert_eq!(
            stage(&c, "alice/a"),
            (Stage::RuntimeError, Some("exited with code 3".into()))
        );
        assert_eq!(
            pass(&mut c),
            vec![],
            "a failed allocation stays until a restart"
        );
        c.run(
            ALICE,
            Command::Restart {
                id: "alice/a".into(),
                factory: false,
            },
        )
        .unwrap();
        assert_eq!(stage(&c, "alice/a").0, Stage::AppStarting);
        pass(&mut c);
        pass(&mut c);
        let a = c.state.allocations.values().next().unwrap();
        assert_ne!(a.id, id);
        assert_eq!(a.generation, 1);
        // Pausing takes it away.
        c.run(
            ALICE,
            Command::Pause {
                id: "alice/a".into(),
            },
        )
        .unwrap();
        pass(&mut c);
        assert!(c.state.allocations.is_empty());
        assert_eq!(plan(&c.state, ""), vec![]);
    }

    #[test]
    fn gpu_flavors_get_distinct_gpus_and_stale_placements_are_refused() {
        let mut c = with_spaces(&["alice/a", "alice/b", "alice/c"], "t4-small");
        add_node(&mut c, "g1", 16, 64, 2);
        let steps = plan(&c.state, "");
        pass(&mut c);
        let mut gpus: Vec<String> = c
            .state
            .allocations
            .values()
            .flat_map(|a| a.gpus.clone())
            .collect();
        gpus.sort();
        assert_eq!(gpus, vec!["GPU-g1-0", "GPU-g1-1"]);
        assert!(stage(&c, "alice/c").1.unwrap().contains("t4-small"));
        // Replaying the same plan against the new state: every placement is refused and nothing changes.
        for (i, step) in steps.into_iter().enumerate() {
            if let Some(command @ Command::PlaceAllocation { .. }) =
                step.into_command(&c.state, format!("again-{i}"))
            {
                let err = c.refused(None, command);
                assert!(err.to_string().contains("stale placement"), "{err}");
            }
        }
        // Users cannot place allocations.
        let err = c.refused(
            Some(ALICE),
            Command::RemoveAllocation {
                id: "x".into(),
                reason: String::new(),
            },
        );
        assert!(matches!(err, ApplyError::Forbidden(_)), "{err}");
    }

    #[test]
    fn images_need_a_write_token_a_valid_name_and_exist_for_a_space() {
        let mut c = with_spaces(&[], "cpu-basic");
        let image = |name: &str| Command::PutImage {
            image: Image {
                name: name.into(),
                id: "sha256:c1".into(),
                manifest: "sha256:m1".into(),
                config: ImageConfig::default(),
                layers: vec![Layer {
                    digest: "sha256:l".into(),
                    size: 1,
                }],
                created_at: 0,
            },
        };
        assert!(matches!(
            c.refused(Some(ALICE_READ), image("x")),
            ApplyError::Forbidden(_)
        ));
        let err = c.refused(Some(ALICE), image("Bad Name"));
        assert!(err.to_string().contains("not an image name"), "{err}");
        c.create_space(ALICE, "alice/s", false).unwrap();
        let err = c.refused(
            Some(ALICE),
            Command::SetSpaceImage {
                id: "alice/s".into(),
                name: "missing:1".into(),
                port: 80,
                startup_timeout_s: 30,
            },
        );
        assert!(err.to_string().contains("missing:1"), "{err}");
        let err = c.refused(
            Some(BOB),
            Command::SetSpaceImage {
                id: "alice/s".into(),
                name: "demo:1".into(),
                port: 80,
                startup_timeout_s: 30,
            },
        );
        assert!(matches!(err, ApplyError::Forbidden(_)), "{err}");
    }
}

mod ledger {
    use super::*;
    use crate::state::AllocationPhase;
    use crate::usage::{due, minute_of, report};

    #[test]
    fn running_minutes_are_recorded_once_and_paused_time_is_free() {
        let mut c = super::scheduling::with_spaces(&["alice/a"], "cpu-upgrade");
        super::scheduling::add_node(&mut c, "n1", 8, 64, 0);
        super::scheduling::pass(&mut c);
        let id = c.state.allocations.keys().next().unwrap().clone();
        // Starting at the first second of a minute M.
        let m = 28_333_334u64;
        c.clock = m * 60_000;
        c.system(Command::ReportAllocation {
            id: id.clone(),
            node: "n1".into(),
            phase: AllocationPhase::Starting,
            message: String::new(),
        })
        .unwrap();
        // Pulling is free: billing starts with the report.
        assert_eq!(
            c.state.allocations[&id].billable_since,
            Some(m * 60_000 + 1000)
        );
        // 3.5 minutes later the leader records the three completed minutes; doing it again adds nothing.
        let now = m * 60_000 + 210_000;
        let entries = due(&c.state, now);
        assert_eq!(
            entries.iter().map(|e| e.minute - m).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        c.system(Command::RecordUsage {
            entries: entries.clone(),
        })
        .unwrap();
        assert!(due(&c.state, now).is_empty());
        // A new leader, or a retried proposal, recording the same minutes changes nothing.
        c.system(Command::RecordUsage { entries }).unwrap();
        assert_eq!(c.state.usage.len(), 3);
        // Paused at M+5m12s: the scheduler's removal closes the ledger through minute M+5.
        c.clock = m * 60_000 + 311_000;
        c.run(
            ALICE,
            Command::Pause {
                id: "alice/a".into(),
            },
        )
        .unwrap();
        super::scheduling::pass(&mut c);
        assert!(c.state.allocations.is_empty());
        assert_eq!(c.state.usage.len(), 6);
        // Paused time adds nothing.
        assert!(due(&c.state, m * 60_000 + 3_600_000).is_empty());
        let lines = report(&c.state, Some("alice"), 0, u64::MAX / 2);
        assert_eq!(lines.len(), 1);
        let price = Catalog::huggingface()
            .get("cpu-upgrade")
            .unwrap()
            .price_per_hour
            .0;
        assert_eq!((lines[0].minutes, lines[0].cost.0), (6, 6 * (price / 60)));
        assert_eq!(lines[0].space_id, "alice/a");
        assert!(report(&c.state, Some("bob"), 0, u64::MAX / 2).is_empty());
        // A window that ends before minute M+3 holds three minutes.
        let early = report(&c.state, None, m * 60_000, (m + 3) * 60_000);
        assert_eq!(early[0].minutes, 3);
        assert_eq!(minute_of(m * 60_000 + 59_999), m);
    }

    #[test]
    fn a_failed_allocation_stops_being_billed_when_it_fails() {
        let mut c = super::scheduling::with_spaces(&["alice/a"], "cpu-upgrade");
        super::scheduling::add_node(&mut c, "n1", 8, 64, 0);
        super::scheduling::pass(&mut c);
        let id = c.state.allocations.keys().next().unwrap().clone();
        let m = 28_333_400u64;
        c.clock = m * 60_000;
        for (phase, minutes_later) in [(AllocationPhase::Running, 0), (AllocationPhase::Failed, 2)]
        {
            c.clock = m * 60_000 + minutes_later * 60_000;
            c.system(Command::ReportAllocation {
                id: id.clone(),
                node: "n1".into(),
                phase,
                message: "x".into(),
            })
            .unwrap();
        }
        assert_eq!(
            c.state.usage.len(),
            3,
            "minutes M, M+1 and the failing one, M+2"
        );
        assert!(due(&c.state, (m + 30) * 60_000).is_empty());
    }
}

mod sleep {
    use super::*;
    use crate::schedule::{Step, plan, sleepy};
    use crate::state::AllocationPhase;

    #[test]
    fn an_idle_space_sleeps_frees_its_slot_and_wakes_on_request() {
        let mut c = super::scheduling::with_spaces(&["alice/a"], "cpu-upgrade");
        super::scheduling::add_node(&mut c, "n1", 8, 64, 0);
        c.run(
            ALICE,
            Command::SetSleepTime {
                id: "alice/a".into(),
                seconds: 60,
            },
        )
        .unwrap();
        super::scheduling::pass(&mut c);
        let id = c.state.allocations.keys().next().unwrap().clone();
        let running = |c: &mut Cluster| {
            c.system(Command::ReportAllocation {
                id: id.clone(),
                node: "n1".into(),
                phase: AllocationPhase::Running,
                message: String::new(),
            })
            .unwrap()
        };
        running(&mut c);
        let since = c.state.allocations[&id].billable_since.unwrap();
        let key = "space:alice/a";
        assert!(sleepy(&c.state, since + 59_000, |_| None).is_empty());
        // A request 30 s in keeps it awake until 90 s.
        assert!(sleepy(&c.state, since + 61_000, |_| Some(since + 30_000)).is_empty());
        assert_eq!(sleepy(&c.state, since + 61_000, |_| None), vec![key]);
        c.system(Command::Sleep { space: key.into() }).unwrap();
        // A late report from the agent does not wake it.
        running(&mut c);
        let steps = super::scheduling::pass(&mut c);
        assert!(
            matches!(&steps[0], Step::Remove { reason, .. } if reason.contains("sleeping")),
            "{steps:?}"
        );
        assert!(c.state.allocations.is_empty());
        assert_eq!(plan(&c.state, ""), vec![], "a sleeping Space is not placed");
        let space = |c: &Cluster| {
            c.state
                .repo(RepoKind::Space, "alice/a")
                .unwrap()
                .space
                .clone()
                .unwrap()
        };
        assert_eq!(space(&c).stage, Stage::Sleeping);
        c.system(Command::Wake { space: key.into() }).unwrap();
        assert_eq!(space(&c).stage, Stage::AppStarting);
        super::scheduling::pass(&mut c);
        assert_eq!(c.state.allocations.len(), 1, "woken, it is placed again");
        // Waking a Space that is not asleep is refused and changes nothing.
        let err = c.refused(None, Command::Wake { space: key.into() });
        assert!(err.to_string().contains("APP_STARTING"), "{err}");
        // Never sleeps with -1; cpu-basic sleeps after 48 h by default.
        c.run(
            ALICE,
            Command::SetSleepTime {
                id: "alice/a".into(),
                seconds: -1,
            },
        )
        .unwrap();
        assert_eq!(space(&c).effective_sleep_time(), None);
    }
}

mod placement {
    use super::*;
    use crate::schedule::{MAX_DRAIN_MOVES, Step, plan, sample_limit};
    use crate::state::{AllocationPhase, NodeState};

    fn hardware(c: &mut Cluster, id: &str, flavor: &str) {
        c.run(
            ALICE,
            Command::RequestHardware {
                id: id.into(),
                flavor: flavor.into(),
                sleep_time: None,
            },
        )
        .unwrap();
    }

    fn node_of(c: &Cluster, space: &str) -> String {
        let key = format!("space:{space}");
        c.state
            .allocations
            .values()
            .find(|a| a.space == key)
            .map(|a| a.node.clone())
            .unwrap_or_default()
    }

    #[test]
    fn gpu_flavors_bin_pack_and_cpu_flavors_spread_off_gpu_nodes() {
        let spaces = ["alice/g1", "alice/g2", "alice/c1", "alice/c2"];
        let mut c = super::scheduling::with_spaces(&spaces, "cpu-basic");
        hardware(&mut c, "alice/g1", "t4-small");
        hardware(&mut c, "alice/g2", "t4-small");
        for (name, cores, gpus) in [
            ("cpu-a", 8, 0),
            ("cpu-b", 8, 0),
            ("gpu-a", 16, 2),
            ("gpu-b", 16, 2),
        ] {
            super::scheduling::add_node(&mut c, name, cores, 64, gpus);
        }
        super::scheduling::pass(&mut c);
        let (g1, g2) = (node_of(&c, "alice/g1"), node_of(&c, "alice/g2"));
        assert!(
            g1.starts_with("gpu-") && g1 == g2,
            "GPU Spaces share a node: {g1} {g2}"
        );
        let (c1, c2) = (node_of(&c, "alice/c1"), node_of(&c, "alice/c2"));
        assert!(
            c1.starts_with("cpu-") && c2.starts_with("cpu-") && c1 != c2,
            "{c1} {c2}"
        );
    }

    #[test]
    fn a_placement_compares_log2_n_feasible_nodes_from_its_start() {
        assert_eq!(sample_limit(1), 2);
        assert_eq!(sample_limit(1000), 10);
        assert_eq!(sample_limit(6100), 13);
        let mut c = super::scheduling::with_spaces(&["alice/a"], "cpu-basic");
        for i in 0..1000 {
            let cores = if i == 900 { 64 } else { 4 };
            super::scheduling::add_node(&mut c, &format!("n{i:04}"), cores, 32, 0);
        }
        // n0900 is the roomiest, but a placement starting at n0500 only compares n0500..n0509.
        let steps = plan(&c.state, "n0500");
        let Step::Place { node, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert!(("n0500".."n0510").contains(&node.as_str()), "{node}");
        // Starting just before it, n0900 is among those compared and wins.
        let steps = plan(&c.state, "n0895");
        assert!(
            matches!(&steps[0], Step::Place { node, .. } if node == "n0900"),
            "{steps:?}"
        );
    }

    #[test]
    fn a_draining_node_gives_up_its_spaces_a_few_at_a_time() {
        let spaces: Vec<String> = (0..6).map(|i| format!("alice/s{i}")).collect();
        let ids: Vec<&str> = spaces.iter().map(String::as_str).collect();
        let mut c = super::scheduling::with_spaces(&ids, "cpu-basic");
        super::scheduling::add_node(&mut c, "d1", 12, 96, 0);
        super::scheduling::pass(&mut c);
        super::scheduling::add_node(&mut c, "r1", 12, 96, 0);
        let all_running = |c: &mut Cluster| {
            let pending: Vec<(String, String)> = c
                .state
                .allocations
                .values()
                .filter(|a| a.phase != AllocationPhase::Running)
                .map(|a| (a.id.clone(), a.node.clone()))
                .collect();
            for (id, node) in pending {
                c.system(Command::ReportAllocation {
                    id,
                    node,
                    phase: AllocationPhase::Running,
                    message: String::new(),
                })
                .unwrap();
            }
        };
        all_running(&mut c);
        c.system(Command::SetNodeState {
            name: "d1".into(),
            state: NodeState::Draining,
        })
        .unwrap();
        let on = |c: &Cluster, node: &str| {
            c.state
                .allocations
                .values()
                .filter(|a| a.node == node)
                .count()
        };
        super::scheduling::pass(&mut c);
        assert_eq!(
            (on(&c, "d1"), on(&c, "r1")),
            (6 - MAX_DRAIN_MOVES, MAX_DRAIN_MOVES)
        );
        // The moved ones are still starting: nothing more moves.
        super::scheduling::pass(&mut c);
        assert_eq!(on(&c, "d1"), 6 - MAX_DRAIN_MOVES);
        all_running(&mut c);
        super::scheduling::pass(&mut c);
        assert_eq!((on(&c, "d1"), on(&c, "r1")), (0, 6));
    }
}

mod schedule_batch {
    use super::*;
    use crate::schedule::plan;

    #[test]
    fn a_pass_in_one_entry_applies_each_step_and_skips_stale_ones() {
        let mut c = super::scheduling::with_spaces(&["alice/a", "alice/b"], "cpu-basic");
        super::scheduling::add_node(&mut c, "n1", 8, 64, 0);
        let steps: Vec<_> = plan(&c.state, "")
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| s.into_step(&c.state, format!("x{i}")))
            .collect();
        assert_eq!(steps.len(), 2);
        // The same placements twice: the second copy is stale and skipped; the entry still applies.
        let mut doubled = steps.clone();
        doubled.extend(steps.iter().cloned().map(|s| match s {
            crate::command::ScheduleStep::Place { mut allocation } => {
                allocation.id.push_str("-again");
                crate::command::ScheduleStep::Place { allocation }
            }
            other => other,
        }));
        c.system(Command::Schedule { steps: doubled }).unwrap();
        assert_eq!(c.state.allocations.len(), 2);
        // Users cannot schedule.
        let err = c.refused(Some(ALICE), Command::Schedule { steps });
        assert!(matches!(err, ApplyError::Forbidden(_)), "{err}");
    }
}

mod refs {
    use super::*;
    use crate::command::{RefUpdate, SpaceCommit};
    use crate::git::MAIN;

    const PACK: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn oid(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn push(old: Option<char>, new: Option<char>, space: Option<SpaceCommit>) -> Command {
        Command::UpdateRefs {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            updates: vec![RefUpdate {
                name: MAIN.into(),
                old: old.map(oid),
                new: new.map(oid),
            }],
            pack: Some(PACK.into()),
            rewrites: vec![],
            space,
        }
    }

    /// A build outcome with a fresh id.
    fn build() -> Option<SpaceCommit> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(SpaceCommit::Build {
            sdk: "docker".into(),
            build: format!("b{n}"),
            headers: vec![],
        })
    }

    #[test]
    fn a_push_moves_main_and_asks_for_a_build() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        c.run(ALICE, push(None, Some('a'), build())).unwrap();
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(repo.sha.as_deref(), Some(oid('a').as_str()));
        assert_eq!(repo.git.packs, vec![PACK.to_owned()]);
        let space = repo.space.as_ref().unwrap();
        assert_eq!(space.stage, Stage::Building);
        assert_eq!(space.sdk, "docker");
        let build = &c.state.builds[space.build.as_ref().unwrap()];
        assert_eq!(build.commit, oid('a'));
        assert_eq!(build.state, crate::state::BuildState::Queued);

        c.run(
            ALICE,
            push(
                Some('a'),
                Some('b'),
                Some(SpaceCommit::ConfigError {
                    message: "README.md:2: sdk: bad".into(),
                }),
            ),
        )
        .unwrap();
        let space = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        let space = space.space.as_ref().unwrap();
        assert_eq!(space.stage, Stage::ConfigError);
        assert_eq!(
            space.error_message.as_deref(),
            Some("README.md:2: sdk: bad")
        );
        assert!(space.build.is_none());
        // The same pack twice is kept once.
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(repo.git.packs.len(), 1);
    }

    #[test]
    fn a_stale_push_conflicts_and_changes_nothing() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        c.run(ALICE, push(None, Some('a'), build())).unwrap();
        let err = c.refused(Some(ALICE), push(None, Some('b'), build()));
        assert!(
            matches!(&err, ApplyError::Conflict { message, .. } if message.contains("moved")),
            "{err:?}"
        );
        let err = c.refused(Some(ALICE), push(Some('c'), Some('b'), build()));
        assert_eq!(err.code(), "Conflict");
    }

    #[test]
    fn pushes_need_write_rights_and_valid_refs() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", true).unwrap();
        assert_eq!(
            c.refused(Some(ALICE_READ), push(None, Some('a'), None))
                .code(),
            "Forbidden"
        );
        // Bob cannot see the private Space: it is absent to him.
        assert_eq!(
            c.refused(Some(BOB), push(None, Some('a'), None)).code(),
            "RepoNotFound"
        );
        for (name, new) in [
            ("refs/heads/a..b", oid('a')),
            ("HEAD", oid('a')),
            (MAIN, "XYZ".to_owned()),
        ] {
            let bad = Command::UpdateRefs {
                kind: RepoKind::Space,
                id: "alice/app".into(),
                updates: vec![RefUpdate {
                    name: name.into(),
                    old: None,
                    new: Some(new),
                }],
                pack: None,
                rewrites: vec![],
                space: None,
            };
            assert_eq!(c.refused(Some(ALICE), bad).code(), "BadRequest", "{name}");
        }
        // A build outcome for a branch other than main is refused.
        let side = Command::UpdateRefs {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            updates: vec![RefUpdate {
                name: "refs/heads/side".into(),
                old: None,
                new: Some(oid('a')),
            }],
            pack: None,
            rewrites: vec![],
            space: build(),
        };
        assert_eq!(c.refused(Some(ALICE), side).code(), "BadRequest");
    }

    #[test]
    fn rewrites_are_recorded_and_deleting_main_clears_sha() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        c.run(ALICE, push(None, Some('a'), build())).unwrap();
        let Command::UpdateRefs {
            kind,
            id,
            updates,
            pack,
            ..
        } = push(Some('a'), Some('b'), None)
        else {
            unreachable!()
        };
        c.run(
            ALICE,
            Command::UpdateRefs {
                kind,
                id,
                updates,
                pack,
                rewrites: vec![MAIN.into()],
                space: build(),
            },
        )
        .unwrap();
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(repo.git.rewrites.len(), 1);
        assert_eq!(repo.git.rewrites[0].by, "alice");
        assert_eq!(repo.git.rewrites[0].old, oid('a'));
        c.run(ALICE, push(Some('b'), None, None)).unwrap();
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(repo.sha, None);
        assert!(repo.git.refs.is_empty());
    }

    #[test]
    fn lfs_objects_are_recorded_by_the_cluster_only() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        let add = |oid: String| Command::AddLfsObjects {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            objects: vec![(oid, 5)],
        };
        assert_eq!(
            c.refused(Some(ALICE), add("a".repeat(64))).code(),
            "Forbidden"
        );
        assert_eq!(c.refused(None, add("A".repeat(64))).code(), "BadRequest");
        c.system(add("a".repeat(64))).unwrap();
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(repo.git.lfs.get(&"a".repeat(64)), Some(&5));
    }

    #[test]
    fn compaction_replaces_the_packs_it_read_and_keeps_newer_ones() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        let pack = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let mut old = None;
        for n in 1..=3u8 {
            let new = char::from(b'a' + n);
            c.run(
                ALICE,
                Command::UpdateRefs {
                    kind: RepoKind::Space,
                    id: "alice/app".into(),
                    updates: vec![RefUpdate {
                        name: MAIN.into(),
                        old: old.map(oid),
                        new: Some(oid(new)),
                    }],
                    pack: Some(pack(n)),
                    rewrites: vec![],
                    space: None,
                },
            )
            .unwrap();
            old = Some(new);
        }
        let compact = |replaced: Vec<String>| Command::CompactPacks {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            replaced,
            pack: pack(9),
        };
        assert_eq!(
            c.refused(Some(ALICE), compact(vec![pack(1)])).code(),
            "Forbidden"
        );
        assert_eq!(
            c.refused(None, compact(vec![pack(1), pack(7)])).code(),
            "Conflict"
        );
        c.system(compact(vec![pack(1), pack(2)])).unwrap();
        let repo = c.state.repo(RepoKind::Space, "alice/app").unwrap();
        assert_eq!(
            repo.git.packs,
            vec![pack(9), pack(3)],
            "the pack pushed after the compaction read stays"
        );
    }

    #[test]
    fn referenced_blobs_are_packs_lfs_objects_and_image_parts() {
        let mut c = scheduling::with_spaces(&["alice/app"], "cpu-basic");
        c.run(ALICE, push(None, Some('a'), build())).unwrap();
        c.system(Command::AddLfsObjects {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            objects: vec![("b".repeat(64), 5)],
        })
        .unwrap();
        let keep = c.state.referenced_blobs();
        for digest in [
            PACK.to_owned(),
            format!("sha256:{}", "b".repeat(64)),
            "sha256:c0".into(),
            "sha256:m0".into(),
            "sha256:l1".into(),
        ] {
            assert!(keep.contains(&digest), "{digest} missing from {keep:?}");
        }
        assert_eq!(keep.len(), 5);
        c.run(
            ALICE,
            Command::DeleteRepo {
                kind: RepoKind::Space,
                id: "alice/app".into(),
            },
        )
        .unwrap();
        assert_eq!(
            c.state.referenced_blobs().len(),
            3,
            "a deleted repo's blobs are garbage"
        );
    }

    #[test]
    fn a_duplicate_shares_the_sources_commits_and_builds() {
        let mut c = Cluster::new();
        c.create_space(ALICE, "alice/app", false).unwrap();
        c.run(ALICE, push(None, Some('a'), build())).unwrap();
        c.run(
            BOB,
            Command::DuplicateSpace {
                uid: "r2".into(),
                from: "alice/app".into(),
                to: "bob/copy".into(),
                private: None,
                spec: SpaceSpec::default(),
            },
        )
        .unwrap();
        let copy = c.state.repo(RepoKind::Space, "bob/copy").unwrap();
        assert_eq!(copy.sha.as_deref(), Some(oid('a').as_str()));
        assert_eq!(copy.git.packs, vec![PACK.to_owned()]);
        assert_eq!(copy.space.as_ref().unwrap().stage, Stage::Building);
    }
}

mod builds {
    use super::*;
    use crate::builds::{MAX_ATTEMPTS, lost, next};
    use crate::command::{BuildOutcome, RefUpdate, SpaceCommit};
    use crate::state::{BuildState, Image};
    use spacedock_shared::wire::{ImageConfig, Layer};

    fn push(c: &mut Cluster, old: Option<&str>, new: &str, build: &str) {
        c.run(
            ALICE,
            Command::UpdateRefs {
                kind: RepoKind::Space,
                id: "alice/app".into(),
                updates: vec![RefUpdate {
                    name: crate::git::MAIN.into(),
                    old: old.map(str::to_owned),
                    new: Some(new.to_owned()),
                }],
                pack: None,
                rewrites: vec![],
                space: Some(SpaceCommit::Build {
                    sdk: "docker".into(),
                    build: build.into(),
                    headers: vec![],
                }),
            },
        )
        .unwrap();
    }

    fn claim(id: &str, builder: impl Into<String>, lease_until: u64) -> Command {
        Command::ClaimBuild {
            id: id.into(),
            builder: builder.into(),
            lease_until,
        }
    }

    fn renew(id: &str, builder: &str, lease_until: u64) -> Command {
        Command::RenewBuild {
            id: id.into(),
            builder: builder.into(),
            lease_until,
        }
    }

    fn finish(id: &str, builder: &str, outcome: BuildOutcome) -> Command {
        Command::FinishBuild {
            id: id.into(),
            builder: builder.into(),
            outcome,
        }
    }

    fn space(c: &Cluster) -> crate::state::SpaceState {
        c.state
            .repo(RepoKind::Space, "alice/app")
            .and_then(|r| r.space.clone())
            .unwrap()
    }

    fn stage(c: &Cluster) -> (Stage, Option<String>) {
        let space = space(c);
        (space.stage, space.error_message)
    }

    fn setup() -> (Cluster, String, String) {
        let mut c = scheduling::with_spaces(&["alice/app"], "cpu-basic");
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        push(&mut c, None, &a, "b1");
        (c, a, b)
    }

    #[test]
    fn a_build_is_taken_renewed_and_sets_the_image() {
        let (mut c, _, _) = setup();
        let now = c.clock;
        assert_eq!(next(&c.state, now).map(|b| b.id.as_str()), Some("b1"));
        c.system(claim("b1", "bx", now + 60_000)).unwrap();
        assert!(
            next(&c.state, now).is_none(),
            "a held build is not offered again"
        );
        // Another builder cannot take it, renew it or finish it.
        let err = c.refused(None, claim("b1", "by", now + 60_000));
        assert_eq!(err.code(), "Conflict");
        c.refused(None, renew("b1", "by", now + 90_000));
        c.system(renew("b1", "bx", now + 90_000)).unwrap();
        // An image that is not stored cannot be the result; users cannot finish builds.
        let unknown = BuildOutcome::Succeeded {
            image: "nope:1".into(),
            port: 7860,
            startup_timeout_s: 60,
            built: None,
        };
        c.refused(None, finish("b1", "bx", unknown));
        let done = BuildOutcome::Succeeded {
            image: "demo:1".into(),
            port: 7860,
            startup_timeout_s: 60,
            built: None,
        };
        assert_eq!(
            c.refused(Some(ALICE), finish("b1", "bx", done.clone()))
                .code(),
            "Forbidden"
        );
        c.system(finish("b1", "bx", done)).unwrap();
        assert_eq!(stage(&c).0, Stage::AppStarting);
        let space = space(&c);
        assert_eq!(space.image.unwrap().port, 7860);
        assert!(space.build.is_none());
        assert_eq!(
            c.state.builds["b1"].state,
            BuildState::Succeeded {
                image: "demo:1".into()
            }
        );
    }

    #[test]
    fn a_built_image_is_recorded_with_the_result_and_only_by_its_build() {
        let (mut c, a, b) = setup();
        let now = c.clock;
        let built = |id: &str| Image {
            name: "spaces/alice/app".into(),
            id: id.into(),
            manifest: format!("{id}-manifest"),
            config: ImageConfig::default(),
            layers: vec![Layer {
                digest: "sha256:l2".into(),
                size: 20,
            }],
            created_at: 0,
        };
        let outcome = |image: Image| BuildOutcome::Succeeded {
            image: "spaces/alice/app".into(),
            port: 7860,
            startup_timeout_s: 60,
            built: Some(image),
        };
        // Users cannot store images under the builders' names.
        let put = Command::PutImage {
            image: built("sha256:x"),
        };
        assert_eq!(c.refused(Some(ALICE), put).code(), "Forbidden");
        c.system(claim("b1", "bx", now + 60_000)).unwrap();
        // A built image must be named as the result, under the builders' prefix.
        let mut misnamed = built("sha256:c1");
        misnamed.name = "demo:2".into();
        let wrong = BuildOutcome::Succeeded {
            image: "demo:2".into(),
            port: 7860,
            startup_timeout_s: 60,
            built: Some(misnamed),
        };
        c.refused(None, finish("b1", "bx", wrong));
        // A superseded build records nothing.
        push(&mut c, Some(&a), &b, "b2");
        c.refused(None, finish("b1", "bx", outcome(built("sha256:c1"))));
        assert!(!c.state.images.contains_key("spaces/alice/app"));
        c.system(claim("b2", "bx", now + 60_000)).unwrap();
        c.system(finish("b2", "bx", outcome(built("sha256:c2"))))
            .unwrap();
        let image = space(&c).image.unwrap();
        assert_eq!(
            (image.name.as_str(), image.id.as_str()),
            ("spaces/alice/app", "sha256:c2")
        );
        assert_eq!(c.state.images["spaces/alice/app"].created_at, c.clock);
        assert_eq!(stage(&c).0, Stage::AppStarting);
    }

    #[test]
    fn a_rebuild_to_the_running_image_leaves_the_space_running() {
        let (mut c, _, _) = setup();
        scheduling::add_node(&mut c, "n1", 2, 16, 0);
        scheduling::pass(&mut c);
        let alloc = c.state.allocations.keys().next().unwrap().clone();
        c.system(Command::ReportAllocation {
            id: alloc,
            node: "n1".into(),
            phase: crate::state::AllocationPhase::Running,
            message: String::new(),
        })
        .unwrap();
        let now = c.clock;
        c.system(claim("b1", "bx", now + 60_000)).unwrap();
        let same = BuildOutcome::Succeeded {
            image: "demo:1".into(),
            port: 8080,
            startup_timeout_s: 30,
            built: None,
        };
        c.system(finish("b1", "bx", same)).unwrap();
        assert_eq!(stage(&c).0, Stage::Running, "nothing to start again");
    }

    #[test]
    fn a_newer_commit_supersedes_and_a_failure_names_its_step() {
        let (mut c, a, b) = setup();
        let now = c.clock;
        c.system(claim("b1", "bx", now + 60_000)).unwrap();
        push(&mut c, Some(&a), &b, "b2");
        assert_eq!(c.state.builds["b1"].state, BuildState::Superseded);
        let late = BuildOutcome::Failed {
            step: "RUN".into(),
            message: "x".into(),
        };
        let err = c.refused(None, finish("b1", "bx", late));
        assert!(
            matches!(&err, ApplyError::Conflict { message, .. } if message.contains("superseded")),
            "{err:?}"
        );
        c.system(claim("b2", "bx", now + 60_000)).unwrap();
        let failed = BuildOutcome::Failed {
            step: "Dockerfile:3: RUN pip install -r requirements.txt".into(),
            message: "exit code 1".into(),
        };
        c.system(finish("b2", "bx", failed)).unwrap();
        let (stage, message) = stage(&c);
        assert_eq!(stage, Stage::BuildError);
        assert_eq!(
            message.as_deref(),
            Some("Dockerfile:3: RUN pip install -r requirements.txt: exit code 1")
        );
    }

    #[test]
    fn a_lost_builders_build_is_retried_then_abandoned() {
        let (mut c, _, _) = setup();
        for attempt in 1..=MAX_ATTEMPTS {
            let now = c.clock;
            assert_eq!(
                next(&c.state, now).map(|b| b.id.as_str()),
                Some("b1"),
                "attempt {attempt}"
            );
            c.system(claim("b1", format!("b{attempt}"), now + 1))
                .unwrap();
            c.clock += 5_000; // the lease runs out: the builder died
        }
        let now = c.clock;
        assert!(next(&c.state, now).is_none(), "no attempts left");
        assert_eq!(lost(&c.state, now).len(), 1);
        c.system(Command::AbandonBuild {
            id: "b1".into(),
            reason: "its builders were lost 3 times".into(),
        })
        .unwrap();
        assert_eq!(
            stage(&c),
            (
                Stage::BuildError,
                Some("build: its builders were lost 3 times".into())
            )
        );
        assert!(lost(&c.state, now).is_empty());
    }

    #[test]
    fn a_restart_builds_what_has_no_image_and_a_factory_restart_rebuilds() {
        // alice/app runs an image; its new commit's build b1 is queued.
        let (mut c, _, _) = setup();
        c.run(
            ALICE,
            Command::Restart {
                id: "alice/app".into(),
                factory: false,
            },
        )
        .unwrap();
        assert_eq!(
            space(&c).build.as_deref(),
            Some("b1"),
            "a plain restart builds nothing new"
        );
        assert_eq!(stage(&c).0, Stage::AppStarting);
        c.run(
            ALICE,
            Command::Restart {
                id: "alice/app".into(),
                factory: true,
            },
        )
        .unwrap();
        let rebuild = space(&c).build.unwrap();
        assert!(
            c.state.builds[&rebuild].factory,
            "a factory restart builds without the cache"
        );
        assert_eq!(c.state.builds["b1"].state, BuildState::Superseded);
        assert_eq!(
            next(&c.state, c.clock).map(|b| b.id.clone()),
            Some(rebuild.clone())
        );
        // A Space with a commit and no image (its build failed) builds again on a restart.
        c.system(claim(&rebuild, "bx", c.clock + 60_000)).unwrap();
        let failed = BuildOutcome::Failed {
            step: "RUN".into(),
            message: "exit 1".into(),
        };
        c.system(finish(&rebuild, "bx", failed)).unwrap();
        c.create_space(ALICE, "alice/other", false).unwrap();
        c.run(
            ALICE,
            Command::UpdateRefs {
                kind: RepoKind::Space,
                id: "alice/other".into(),
                updates: vec![RefUpdate {
                    name: crate::git::MAIN.into(),
                    old: None,
                    new: Some("c".repeat(40)),
                }],
                pack: None,
                rewrites: vec![],
                space: Some(SpaceCommit::Build {
                    sdk: "docker".into(),
                    build: "o1".into(),
                    headers: vec![],
                }),
            },
        )
        .unwrap();
        c.system(claim("o1", "bx", c.clock + 60_000)).unwrap();
        let failed = BuildOutcome::Failed {
            step: "RUN".into(),
            message: "exit 1".into(),
        };
        c.system(finish("o1", "bx", failed)).unwrap();
        c.run(
            ALICE,
            Command::Restart {
                id: "alice/other".into(),
                factory: false,
            },
        )
        .unwrap();
        let other = c
            .state
            .repo(RepoKind::Space, "alice/other")
            .unwrap()
            .space
            .clone()
            .unwrap();
        assert_eq!(other.stage, Stage::Building);
        let again = other.build.unwrap();
        assert_eq!(c.state.builds[&again].state, BuildState::Queued);
        assert!(!c.state.builds[&again].factory);
    }

    #[test]
    fn only_the_last_finished_builds_are_kept() {
        let (mut c, a, _) = setup();
        let mut old = a;
        for i in 0..(crate::builds::KEEP_DONE + 5) {
            let new = format!("{:040x}", i + 1);
            push(&mut c, Some(&old), &new, &format!("n{i}"));
            old = new;
        }
        let of_space = c
            .state
            .builds
            .values()
            .filter(|b| b.space == "space:alice/app")
            .count();
        assert_eq!(
            of_space,
            crate::builds::KEEP_DONE,
            "{:?}",
            c.state.builds.keys().collect::<Vec<_>>()
        );
        assert!(
            c.state
                .builds
                .contains_key(&format!("n{}", crate::builds::KEEP_DONE + 4))
        );
    }

    #[test]
    fn build_ids_are_new() {
        let (mut c, a, b) = setup();
        let reused = Command::UpdateRefs {
            kind: RepoKind::Space,
            id: "alice/app".into(),
            updates: vec![RefUpdate {
                name: crate::git::MAIN.into(),
                old: Some(a),
                new: Some(b),
            }],
            pack: None,
            rewrites: vec![],
            space: Some(SpaceCommit::Build {
                sdk: "docker".into(),
                build: "b1".into(),
                headers: vec![],
            }),
        };
        assert_eq!(c.refused(Some(ALICE), reused).code(), "BadRequest");
    }
}
