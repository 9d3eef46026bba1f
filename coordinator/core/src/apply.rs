//! Applying a command to the state: deterministic, all-or-nothing, with permissions re-checked at apply time.
//!
//! Every handler validates first and mutates last, so a refused command leaves the state exactly as it was.

use std::collections::BTreeMap;

use spacedock_shared::flavor::{DEFAULT_FLAVOR, Flavor};
use spacedock_shared::names::{RepoId, check_namespace};
use spacedock_shared::space_config::Sdk;

use crate::access::{
    Principal, authenticate, can_see, check_env_key, check_sleep_time, check_value,
};
use crate::command::SpaceCommit;
use crate::command::{Command, Envelope, KeyValue, NewToken, SpaceSpec};
use crate::error::ApplyError;
use crate::state::{
    AllocationPhase, JoinToken, Millis, Node, NodeState, Org, Repo, RepoGit, RepoKind, Role,
    Secret, SecretValue, SpaceImage, SpaceState, Stage, State, Token, User, Variable, repo_key,
};
use crate::{builds, schedule, usage};

/// Longest `startup_duration_timeout` a Space may ask for (a day).
pub const MAX_STARTUP_TIMEOUT_S: u64 = 86_400;

/// Applies one entry. On error nothing changed.
pub fn apply(state: &mut State, envelope: &Envelope) -> Result<(), ApplyError> {
    let at = envelope.at;
    let principal_hash = envelope.actor.as_ref().map(|a| a.token_hash.clone());
    match &envelope.command {
        Command::Bootstrap {
            cluster_id,
            member,
            flavors,
            admin_id,
            admin_token,
        } => {
            if state.cluster_id.is_some() {
                return Err(ApplyError::Forbidden(
                    "the cluster is already bootstrapped".into(),
                ));
            }
            system_only(&principal_hash)?;
            state.cluster_id = Some(cluster_id.clone());
            state.members.insert(member.id, member.clone());
            state.flavors = flavors.clone();
            let admin = User {
                id: admin_id.clone(),
                name: admin_token.owner.clone(),
                fullname: "Cluster administrator".into(),
                email: None,
                is_admin: true,
                created_at: at,
            };
            state.users.insert(admin.name.to_ascii_lowercase(), admin);
            insert_token(state, admin_token, at);
            Ok(())
        }
        Command::CreateUser {
            id,
            name,
            fullname,
            email,
            is_admin,
        } => {
            let p = actor(state, &principal_hash, at)?;
            if !p.is_cluster_admin() {
                return Err(ApplyError::Forbidden(
                    "creating users needs a cluster admin token".into(),
                ));
            }
            check_new_namespace(state, "name", name)?;
            let user = User {
                id: id.clone(),
                name: name.clone(),
                fullname: fullname.clone(),
                email: email.clone(),
                is_admin: *is_admin,
                created_at: at,
            };
            state.users.insert(name.to_ascii_lowercase(), user);
            Ok(())
        }
        Command::CreateOrg { id, name, fullname } => {
            let p = actor(state, &principal_hash, at)?;
            if p.token.role < Role::Write {
                return Err(ApplyError::Forbidden(
                    "creating an organization needs a write token".into(),
                ));
            }
            check_new_namespace(state, "name", name)?;
            let creator = p.user.name.to_ascii_lowercase();
            let org = Org {
                id: id.clone(),
                name: name.clone(),
                fullname: fullname.clone(),
                created_at: at,
                members: BTreeMap::from([(creator, Role::Admin)]),
            };
            state.orgs.insert(name.to_ascii_lowercase(), org);
            Ok(())
        }
        Command::SetOrgMember { org, user, role } => {
            let p = actor(state, &principal_hash, at)?;
            let org_key = org.to_ascii_lowercase();
            if !state.orgs.contains_key(&org_key) {
                return Err(ApplyError::NotFound {
                    what: "organization",
                    name: org.clone(),
                });
            }
            let org_admin = state.orgs[&org_key]
                .members
                .get(&p.user.name.to_ascii_lowercase())
                == Some(&Role::Admin);
            let allowed = p.is_cluster_admin() || (org_admin && p.token.role >= Role::Write);
            if !allowed {
                return Err(ApplyError::Forbidden(format!(
                    "managing members of `{org}` needs its admin role"
                )));
            }
            let user_key = user.to_ascii_lowercase();
            if !state.users.contains_key(&user_key) {
                return Err(ApplyError::NotFound {
                    what: "user",
                    name: user.clone(),
                });
            }
            let members = &mut state
                .orgs
                .get_mut(&org_key)
                .ok_or_else(|| not_found_org(org))?
                .members;
            match role {
                Some(role) => members.insert(user_key, *role),
                None => members.remove(&user_key),
            };
            Ok(())
        }
        Command::CreateToken { token } => {
            let p = actor(state, &principal_hash, at)?;
            let own = token.owner.eq_ignore_ascii_case(&p.user.name);
            let allowed = p.is_cluster_admin() || (own && token.role <= p.token.role);
            if !allowed {
                return Err(ApplyError::Forbidden(
                    "a token may only create tokens for its own user with at most its own role"
                        .into(),
                ));
            }
            if !state.users.contains_key(&token.owner.to_ascii_lowercase()) {
                return Err(ApplyError::NotFound {
                    what: "user",
                    name: token.owner.clone(),
                });
            }
            if state.tokens.contains_key(&token.secret_hash)
                || state.tokens.values().any(|t| t.id == token.id)
            {
                return Err(ApplyError::Conflict {
                    message: "token already exists".into(),
                    url_path: None,
                });
            }
            if token.expires_at.is_some_and(|e| e <= at) {
                return Err(ApplyError::invalid("expires", "the expiry is in the past"));
            }
            insert_token(state, token, at);
            Ok(())
        }
        Command::RevokeToken { id } => {
            let p = actor(state, &principal_hash, at)?;
            let is_admin = p.is_cluster_admin();
            let user = p.user.name.to_ascii_lowercase();
            let token = state
                .tokens
                .values_mut()
                .find(|t| &t.id == id)
                .ok_or_else(|| ApplyError::NotFound {
                    what: "token",
                    name: id.clone(),
                })?;
            if !is_admin && token.owner != user {
                return Err(ApplyError::Forbidden(
                    "only the token's owner or a cluster admin may revoke it".into(),
                ));
            }
            token.revoked = true;
            Ok(())
        }
        Command::CreateRepo {
            uid,
            kind,
            id,
            private,
            space,
        } => {
            let p = actor(state, &principal_hash, at)?;
            let repo_id = parse_repo_id(id)?;
            check_namespace_writable(state, &p, repo_id.namespace())?;
            if let Some(existing) = state.repo(*kind, id) {
                return Err(exists(existing));
            }
            let space_state = match (kind, space) {
                (RepoKind::Space, Some(spec)) => Some(new_space(state, &repo_id, spec, None, at)?),
                (RepoKind::Space, None) => {
                    return Err(ApplyError::invalid("sdk", "a Space needs an sdk"));
                }
                (_, Some(_)) => {
                    return Err(ApplyError::invalid(
                        "type",
                        "only Spaces take Space settings",
                    ));
                }
                (_, None) => None,
            };
            insert_repo(state, uid, *kind, id, *private, space_state, at);
            Ok(())
        }
        Command::DeleteRepo { kind, id } => {
            let p = actor(state, &principal_hash, at)?;
            let repo = writable_repo(state, &p, *kind, id)?;
            let key = repo_key(repo.kind, &repo.id);
            let subdomain = repo.space.as_ref().map(|s| s.subdomain.clone());
            if let Some(subdomain) = subdomain {
                state.subdomains.remove(&subdomain);
            }
            state.repos.remove(&key);
            Ok(())
        }
        Command::MoveRepo { kind, from, to } => {
            let p = actor(state, &principal_hash, at)?;
            let repo = writable_repo(state, &p, *kind, from)?.clone();
            let to_id = parse_repo_id(to)?;
            check_namespace_writable(state, &p, to_id.namespace())?;
            if let Some(existing) = state.repo(*kind, to)
                && repo_key(*kind, to) != repo_key(*kind, from)
            {
                return Err(exists(existing));
            }
            state.repos.remove(&repo_key(*kind, from));
            let mut moved = repo;
            moved.id = to.clone();
            moved.updated_at = at;
            if let Some(space) = &mut moved.space {
                state.subdomains.remove(&space.subdomain);
                space.subdomain = assign_subdomain(state, &to_id)?;
                state
                    .subdomains
                    .insert(space.subdomain.clone(), repo_key(*kind, to));
            }
            state.repos.insert(repo_key(*kind, to), moved);
            Ok(())
        }
        Command::SetVisibility { kind, id, private } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, *kind, id)?;
            let repo = repo_mut(state, *kind, id)?;
            repo.private = *private;
            repo.updated_at = at;
            Ok(())
        }
        Command::RequestHardware {
            id,
            flavor,
            sleep_time,
        } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            check_flavor(&state.flavors, "flavor", flavor)?;
            if let Some(s) = sleep_time {
                check_sleep_time("sleepTimeSeconds", *s)?;
            }
            let space = space_mut(state, id, at)?;
            space.hardware_requested = flavor.clone();
            if sleep_time.is_some() {
                space.sleep_time = *sleep_time;
            }
            Ok(())
        }
        Command::SetSleepTime { id, seconds } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            check_sleep_time("seconds", *seconds)?;
            space_mut(state, id, at)?.sleep_time = Some(*seconds);
            Ok(())
        }
        Command::Pause { id } => {
            let p = actor(state, &principal_hash, at)?;
            let repo = writable_repo(state, &p, RepoKind::Space, id)?;
            if repo
                .space
                .as_ref()
                .is_some_and(|s| s.sdk == Sdk::Static.as_str())
            {
                return Err(ApplyError::invalid(
                    "sdk",
                    "a static Space cannot be paused",
                ));
            }
            let space = space_mut(state, id, at)?;
            space.stage = Stage::Paused;
            space.hardware_current = None;
            Ok(())
        }
        Command::Restart { id, factory } => {
            let p = actor(state, &principal_hash, at)?;
            let repo = writable_repo(state, &p, RepoKind::Space, id)?;
            let (uid, sha, key) = (
                repo.uid.clone(),
                repo.sha.clone(),
                repo_key(repo.kind, &repo.id),
            );
            let space = space_mut(state, id, at)?;
            space.restarts += 1;
            if *factory {
                space.factory_restarts += 1;
            }
            let broken = matches!(space.stage, Stage::ConfigError | Stage::NoAppFile);
            // A Space that has no image of its commit yet, or a factory restart, builds again (without the
            // cache for a factory restart); a restart does not mend a README that does not configure it.
            let rebuild = match &sha {
                Some(commit)
                    if space.app_file.is_none()
                        && !broken
                        && (space.image.is_none() || *factory) =>
                {
                    Some(commit.clone())
                }
                _ => None,
            };
            let build_id = format!("{uid}-r{}", space.restarts);
            if !(broken && space.image.is_none()) {
                space.error_message = None;
            }
            space.stage = match (&rebuild, &space.image, &space.app_file) {
                (_, _, Some(_)) => Stage::Running,
                (_, Some(_), None) => Stage::AppStarting,
                (Some(_), None, None) => Stage::Building,
                (None, None, None) if broken => space.stage,
                (None, None, None) => Stage::NoAppFile,
            };
            if let Some(commit) = rebuild {
                space.build = Some(build_id.clone());
                let sdk = space.sdk.clone();
                builds::enqueue(state, &build_id, &key, &commit, &sdk, *factory, at);
            }
            Ok(())
        }
        Command::SetSecret { id, secret } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            check_key_value("key", secret)?;
            let entry = Secret {
                value: SecretValue::new(secret.value.clone()),
                description: secret.description.clone(),
                updated_at: at,
            };
            space_mut(state, id, at)?
                .secrets
                .insert(secret.key.clone(), entry);
            Ok(())
        }
        Command::DeleteSecret { id, key } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            space_mut(state, id, at)?.secrets.remove(key);
            Ok(())
        }
        Command::SetVariable { id, variable } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            check_key_value("key", variable)?;
            let entry = Variable {
                value: variable.value.clone(),
                description: variable.description.clone(),
                updated_at: at,
            };
            space_mut(state, id, at)?
                .variables
                .insert(variable.key.clone(), entry);
            Ok(())
        }
        Command::DeleteVariable { id, key } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            space_mut(state, id, at)?.variables.remove(key);
            Ok(())
        }
        Command::DuplicateSpace {
            uid,
            from,
            to,
            private,
            spec,
        } => {
            let p = actor(state, &principal_hash, at)?;
            let source = state
                .repo(RepoKind::Space, from)
                .filter(|r| can_see(state, Some(&p), r))
                .ok_or_else(|| ApplyError::RepoNotFound(from.clone()))?
                .clone();
            let to_id = parse_repo_id(to)?;
            check_namespace_writable(state, &p, to_id.namespace())?;
            if let Some(existing) = state.repo(RepoKind::Space, to) {
                return Err(exists(existing));
            }
            let source_space = source
                .space
                .as_ref()
                .ok_or_else(|| ApplyError::RepoNotFound(from.clone()))?;
            let spec = SpaceSpec {
                sdk: source_space.sdk.clone(),
                ..spec.clone()
            };
            let mut space = new_space(state, &to_id, &spec, Some(&source_space.variables), at)?;
            space.duplicated_from = Some(source.id.clone());
            // The copy runs what the source's commit makes: its static files, or a build of its own.
            let build_id = format!("{uid}-1");
            match (&source.sha, &source_space.app_file) {
                (Some(_), Some(app_file)) => {
                    space.stage = Stage::Running;
                    space.app_file = Some(app_file.clone());
                    space.headers = source_space.headers.clone();
                }
                (Some(_), None) => {
                    space.stage = Stage::Building;
                    space.build = Some(build_id.clone());
                }
                (None, _) => {}
            }
            insert_repo(
                state,
                uid,
                RepoKind::Space,
                to,
                private.unwrap_or(source.private),
                Some(space),
                at,
            );
            // The copy shares the source's objects: the same packs, the same refs.
            let copy = repo_mut(state, RepoKind::Space, to)?;
            copy.git = source.git.clone();
            copy.git.rewrites.clear();
            copy.sha = source.sha.clone();
            let queued = copy.space.as_ref().is_some_and(|s| s.build.is_some());
            if let (true, Some(commit)) = (queued, &source.sha) {
                let key = repo_key(RepoKind::Space, to);
                builds::enqueue(state, &build_id, &key, commit, &source_space.sdk, false, at);
            }
            Ok(())
        }
        Command::SetFlavors { flavors } => {
            if let Some(hash) = &principal_hash {
                let p = authenticate(state, hash, at)?;
                if !p.is_cluster_admin() {
                    return Err(ApplyError::Forbidden(
                        "changing the catalog needs a cluster admin token".into(),
                    ));
                }
            }
            if !flavors.iter().any(|f| f.name == DEFAULT_FLAVOR) {
                return Err(ApplyError::invalid(
                    "flavors",
                    format!("the catalog must keep `{DEFAULT_FLAVOR}`"),
                ));
            }
            state.flavors = flavors.clone();
            Ok(())
        }
        Command::AddMember { member } => {
            system_only(&principal_hash)?;
            state.members.insert(member.id, member.clone());
            Ok(())
        }
        Command::RemoveMember { id } => {
            system_only(&principal_hash)?;
            state.members.remove(id);
            Ok(())
        }
        Command::CreateJoinToken {
            id,
            role,
            secret_hash,
            expires_at,
        } => {
            let p = actor(state, &principal_hash, at)?;
            if !p.is_cluster_admin() {
                return Err(ApplyError::Forbidden(
                    "join tokens need a cluster admin token".into(),
                ));
            }
            if *expires_at <= at {
                return Err(ApplyError::invalid(
                    "ttl",
                    "the join token would already be expired",
                ));
            }
            if state.join_tokens.contains_key(secret_hash)
                || state.join_tokens.values().any(|t| &t.id == id)
            {
                return Err(ApplyError::Conflict {
                    message: "join token already exists".into(),
                    url_path: None,
                });
            }
            let token = JoinToken {
                id: id.clone(),
                role: *role,
                secret_hash: secret_hash.clone(),
                created_at: at,
                expires_at: *expires_at,
                revoked: false,
            };
            state.join_tokens.insert(secret_hash.clone(), token);
            Ok(())
        }
        Command::RegisterNode { inventory } => {
            system_only(&principal_hash)?;
            let name = inventory.name.clone();
            if name.is_empty() || name.len() > 253 {
                return Err(ApplyError::invalid(
                    "name",
                    "a node needs a name of 1 to 253 characters",
                ));
            }
            let previous = state.nodes.get(&name);
            let node = Node {
                name: name.clone(),
                inventory: inventory.clone(),
                // A draining node stays draining when it reconnects.
                state: match previous.map(|n| n.state) {
                    Some(NodeState::Draining) => NodeState::Draining,
                    _ => NodeState::Ready,
                },
                registered_at: previous.map_or(at, |n| n.registered_at),
                updated_at: at,
            };
            state.nodes.insert(name, node);
            Ok(())
        }
        Command::SetNodeState {
            name,
            state: node_state,
        } => {
            if let Some(hash) = &principal_hash {
                let p = authenticate(state, hash, at)?;
                if !p.is_cluster_admin() {
                    return Err(ApplyError::Forbidden(
                        "changing a node's state needs a cluster admin token".into(),
                    ));
                }
            }
            let node = state
                .nodes
                .get_mut(name)
                .ok_or_else(|| ApplyError::NotFound {
                    what: "node",
                    name: name.clone(),
                })?;
            node.state = *node_state;
            node.updated_at = at;
            Ok(())
        }
        Command::PutImage { image } => {
            let p = actor(state, &principal_hash, at)?;
            if p.token.role == Role::Read {
                return Err(ApplyError::Forbidden(
                    "storing images needs a write token".into(),
                ));
            }
            check_image_name(&image.name)?;
            if image
                .name
                .starts_with(spacedock_shared::wire::BUILT_IMAGE_PREFIX)
            {
                return Err(ApplyError::Forbidden(format!(
                    "image names starting with `{}` are the builders' own",
                    spacedock_shared::wire::BUILT_IMAGE_PREFIX
                )));
            }
            if image.layers.is_empty() {
                return Err(ApplyError::invalid("layers", "an image needs a layer"));
            }
            let mut image = image.clone();
            image.created_at = at;
            state.images.insert(image.name.clone(), image);
            Ok(())
        }
        Command::SetSpaceImage {
            id,
            name,
            port,
            startup_timeout_s,
        } => {
            let p = actor(state, &principal_hash, at)?;
            writable_repo(state, &p, RepoKind::Space, id)?;
            let image = state.images.get(name).ok_or_else(|| ApplyError::NotFound {
                what: "image",
                name: name.clone(),
            })?;
            if *port == 0 {
                return Err(ApplyError::invalid("port", "a port from 1 to 65535"));
            }
            if !(1..=MAX_STARTUP_TIMEOUT_S).contains(startup_timeout_s) {
                return Err(ApplyError::invalid(
                    "startupTimeout",
                    format!("seconds from 1 to {MAX_STARTUP_TIMEOUT_S}"),
                ));
            }
            let chosen = SpaceImage {
                name: name.clone(),
                id: image.id.clone(),
                port: *port,
                startup_timeout_s: *startup_timeout_s,
            };
            let space = space_mut(state, id, at)?;
            space.image = Some(chosen);
            space.stage = Stage::AppStarting;
            space.error_message = None;
            Ok(())
        }
        Command::PlaceAllocation { allocation } => {
            system_only(&principal_hash)?;
            schedule::check_placement(state, allocation)?;
            let mut allocation = allocation.clone();
            allocation.phase = AllocationPhase::Pulling;
            allocation.message = String::new();
            allocation.created_at = at;
            allocation.updated_at = at;
            allocation.billable_since = None;
            if let Some(space) = state
                .repos
                .get_mut(&allocation.space)
                .and_then(|r| r.space.as_mut())
            {
                space.hardware_current = Some(allocation.flavor.clone());
                space.stage = Stage::AppStarting;
                space.error_message = None;
            }
            state.allocations.insert(allocation.id.clone(), allocation);
            Ok(())
        }
        Command::RemoveAllocation { id, reason: _ } => {
            system_only(&principal_hash)?;
            let removed = state
                .allocations
                .remove(id)
                .ok_or_else(|| ApplyError::NotFound {
                    what: "allocation",
                    name: id.clone(),
                })?;
            usage::close(state, &removed, at);
            if let Some(space) = state
                .repos
                .get_mut(&removed.space)
                .and_then(|r| r.space.as_mut())
            {
                space.hardware_current = None;
                if space.stage == Stage::Running {
                    space.stage = Stage::AppStarting;
                }
            }
            Ok(())
        }
        Command::WaitForCapacity { space, message } => {
            system_only(&principal_hash)?;
            let space = state
                .repos
                .get_mut(space)
                .and_then(|r| r.space.as_mut())
                .ok_or_else(|| ApplyError::RepoNotFound(space.clone()))?;
            space.error_message = Some(message.clone());
            Ok(())
        }
        Command::Schedule { steps } => {
            system_only(&principal_hash)?;
            for step in steps {
                let one = Envelope {
                    command: step.clone().into(),
                    ..envelope.clone()
                };
                // A step the state has outrun is refused by its own checks and changes nothing.
                let _ = apply(state, &one);
            }
            Ok(())
        }
        Command::Sleep { space } | Command::Wake { space } => {
            system_only(&principal_hash)?;
            let sleeping = matches!(envelope.command, Command::Sleep { .. });
            let s = state
                .repos
                .get_mut(space)
                .and_then(|r| r.space.as_mut())
                .ok_or_else(|| ApplyError::RepoNotFound(space.clone()))?;
            let (from, to) = if sleeping {
                (&[Stage::Running, Stage::AppStarting][..], Stage::Sleeping)
            } else {
                (&[Stage::Sleeping][..], Stage::AppStarting)
            };
            if s.image.is_none() || !from.contains(&s.stage) {
                return Err(ApplyError::Conflict {
                    message: format!("the Space is {}", s.stage.as_str()),
                    url_path: None,
                });
            }
            s.stage = to;
            s.error_message = None;
            Ok(())
        }
        Command::RecordUsage { entries } => {
            system_only(&principal_hash)?;
            usage::record(state, entries);
            Ok(())
        }
        Command::UpdateRefs {
            kind,
            id,
            updates,
            pack,
            rewrites,
            space,
        } => {
            let p = actor(state, &principal_hash, at)?;
            let by = p.user.name.clone();
            let repo = writable_repo(state, &p, *kind, id)?;
            crate::git::check_updates(repo, updates, pack.as_deref(), rewrites, space.as_ref())?;
            if let Some(SpaceCommit::Build { build, .. }) = space
                && (build.is_empty() || state.builds.contains_key(build))
            {
                return Err(ApplyError::invalid(
                    "build",
                    format!("`{build}` is not a new build id"),
                ));
            }
            let key = repo_key(*kind, id);
            let repo = repo_mut(state, *kind, id)?;
            crate::git::update_refs(repo, updates, pack, rewrites, space.as_ref(), &by, at);
            if let (Some(SpaceCommit::Build { sdk, build, .. }), Some(commit)) =
                (space, repo.sha.clone())
            {
                builds::enqueue(state, build, &key, &commit, sdk, false, at);
            }
            Ok(())
        }
        Command::AddLfsObjects { kind, id, objects } => {
            system_only(&principal_hash)?;
            for (oid, _) in objects {
                if oid.len() != 64 || !oid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(ApplyError::invalid(
                        "oid",
                        format!("`{oid}` is not a sha256"),
                    ));
                }
            }
            let repo = repo_mut(state, *kind, id)?;
            repo.git.lfs.extend(objects.iter().cloned());
            Ok(())
        }
        Command::ClaimBuild {
            id,
            builder,
            lease_until,
        } => {
            system_only(&principal_hash)?;
            builds::claim(state, id, builder, *lease_until, at)
        }
        Command::RenewBuild {
            id,
            builder,
            lease_until,
        } => {
            system_only(&principal_hash)?;
            builds::renew(state, id, builder, *lease_until, at)
        }
        Command::FinishBuild {
            id,
            builder,
            outcome,
        } => {
            system_only(&principal_hash)?;
            builds::finish(state, id, builder, outcome, at)
        }
        Command::CompactPacks {
            kind,
            id,
            replaced,
            pack,
        } => {
            system_only(&principal_hash)?;
            let repo = repo_mut(state, *kind, id)?;
            crate::git::compact(repo, replaced, pack)
        }
        Command::AbandonBuild { id, reason } => {
            system_only(&principal_hash)?;
            builds::abandon(state, id, reason, at)
        }
        Command::ReportAllocation {
            id,
            node,
            phase,
            message,
        } => {
            system_only(&principal_hash)?;
            let allocation = state
                .allocations
                .get_mut(id)
                .filter(|a| &a.node == node)
                .ok_or_else(|| ApplyError::NotFound {
                    what: "allocation",
                    name: format!("{id} on node {node}"),
                })?;
            allocation.phase = *phase;
            allocation.message = message.clone();
            allocation.updated_at = at;
            let billable = matches!(phase, AllocationPhase::Starting | AllocationPhase::Running);
            if billable && allocation.billable_since.is_none() {
                allocation.billable_since = Some(at);
            }
            let reported = allocation.clone();
            if *phase == AllocationPhase::Failed {
                usage::close(state, &reported, at);
                if let Some(a) = state.allocations.get_mut(id) {
                    a.billable_since = None;
                }
            }
            if let Some(space) = state
                .repos
                .get_mut(&reported.space)
                .and_then(|r| r.space.as_mut())
                && !matches!(space.stage, Stage::Paused | Stage::Sleeping)
            {
                let (stage, error) = match phase {
                    AllocationPhase::Pulling | AllocationPhase::Starting => {
                        (Stage::AppStarting, None)
                    }
                    // The old commit runs while a new one waits for its build.
                    AllocationPhase::Running if space.build.is_some() => {
                        (Stage::RunningBuilding, None)
                    }
                    AllocationPhase::Running => (Stage::Running, None),
                    AllocationPhase::Failed => (Stage::RuntimeError, Some(message.clone())),
                };
                space.stage = stage;
                space.error_message = error;
            }
            Ok(())
        }
        Command::RevokeJoinToken { id } => {
            let p = actor(state, &principal_hash, at)?;
            if !p.is_cluster_admin() {
                return Err(ApplyError::Forbidden(
                    "join tokens need a cluster admin token".into(),
                ));
            }
            let token = state
                .join_tokens
                .values_mut()
                .find(|t| &t.id == id)
                .ok_or_else(|| ApplyError::NotFound {
                    what: "join token",
                    name: id.clone(),
                })?;
            token.revoked = true;
            Ok(())
        }
    }
}

fn system_only(actor: &Option<String>) -> Result<(), ApplyError> {
    match actor {
        None => Ok(()),
        Some(_) => Err(ApplyError::Forbidden(
            "this command is only issued by the cluster itself".into(),
        )),
    }
}

fn actor<'a>(
    state: &'a State,
    token_hash: &Option<String>,
    at: Millis,
) -> Result<Principal<'a>, ApplyError> {
    let hash = token_hash
        .as_deref()
        .ok_or_else(|| ApplyError::Unauthorized("a token is required".into()))?;
    authenticate(state, hash, at)
}

fn not_found_org(org: &str) -> ApplyError {
    ApplyError::NotFound {
        what: "organization",
        name: org.to_owned(),
    }
}

fn parse_repo_id(id: &str) -> Result<RepoId, ApplyError> {
    RepoId::parse(id).map_err(|e| ApplyError::invalid("name", e.to_string()))
}

fn check_new_namespace(state: &State, field: &str, name: &str) -> Result<(), ApplyError> {
    check_namespace(name).map_err(|e| ApplyError::invalid(field, e.to_string()))?;
    if state.user(name).is_some() || state.org(name).is_some() {
        return Err(ApplyError::Conflict {
            message: format!("the name `{name}` is taken"),
            url_path: None,
        });
    }
    Ok(())
}

fn check_namespace_writable(
    state: &State,
    p: &Principal<'_>,
    namespace: &str,
) -> Result<(), ApplyError> {
    if state.user(namespace).is_none() && state.org(namespace).is_none() {
        return Err(ApplyError::NotFound {
            what: "namespace",
            name: namespace.to_owned(),
        });
    }
    if !p.can_write(state, namespace) {
        return Err(ApplyError::Forbidden(format!(
            "you do not have write access to `{namespace}`"
        )));
    }
    Ok(())
}

/// The repo, if the caller may write to it; private repos the caller cannot see are `RepoNotFound`.
fn writable_repo<'a>(
    state: &'a State,
    p: &Principal<'_>,
    kind: RepoKind,
    id: &str,
) -> Result<&'a Repo, ApplyError> {
    let repo = state
        .repo(kind, id)
        .filter(|r| can_see(state, Some(p), r))
        .ok_or_else(|| ApplyError::RepoNotFound(id.to_owned()))?;
    if !p.can_write(state, repo.namespace()) {
        return Err(ApplyError::Forbidden(format!(
            "you do not have write access to `{}`",
            repo.id
        )));
    }
    Ok(repo)
}

fn repo_mut<'a>(
    state: &'a mut State,
    kind: RepoKind,
    id: &str,
) -> Result<&'a mut Repo, ApplyError> {
    state
        .repos
        .get_mut(&repo_key(kind, id))
        .ok_or_else(|| ApplyError::RepoNotFound(id.to_owned()))
}

fn space_mut<'a>(
    state: &'a mut State,
    id: &str,
    at: Millis,
) -> Result<&'a mut SpaceState, ApplyError> {
    let repo = repo_mut(state, RepoKind::Space, id)?;
    repo.updated_at = at;
    repo.space
        .as_mut()
        .ok_or_else(|| ApplyError::RepoNotFound(id.to_owned()))
}

fn exists(existing: &Repo) -> ApplyError {
    ApplyError::Conflict {
        message: format!("You already created this {} repo", existing.kind.as_str()),
        url_path: Some(format!("{}{}", existing.kind.url_prefix(), existing.id)),
    }
}

fn check_flavor(flavors: &[Flavor], field: &str, name: &str) -> Result<(), ApplyError> {
    if flavors.iter().any(|f| f.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = flavors.iter().map(|f| f.name.as_str()).collect();
    Err(ApplyError::invalid(
        field,
        format!("unknown flavor `{name}`; flavors: {}", names.join(", ")),
    ))
}

fn check_key_value(field: &str, kv: &KeyValue) -> Result<(), ApplyError> {
    check_env_key(field, &kv.key)?;
    check_value(field, &kv.value, kv.description.as_deref())
}

fn assign_subdomain(state: &State, id: &RepoId) -> Result<String, ApplyError> {
    id.assign_subdomain(|s| state.subdomains.contains_key(s))
        .map_err(|tried| ApplyError::Conflict {
            message: format!(
                "no free subdomain for `{id}` (tried `{}` and `{tried}`)",
                id.subdomain()
            ),
            url_path: None,
        })
}

fn new_space(
    state: &State,
    id: &RepoId,
    spec: &SpaceSpec,
    variables_from: Option<&BTreeMap<String, Variable>>,
    at: Millis,
) -> Result<SpaceState, ApplyError> {
    if Sdk::parse(&spec.sdk).is_none() {
        return Err(ApplyError::invalid(
            "sdk",
            format!("`{}` is not one of {}", spec.sdk, Sdk::ALL.join(", ")),
        ));
    }
    let hardware = spec
        .hardware
        .clone()
        .unwrap_or_else(|| DEFAULT_FLAVOR.to_owned());
    check_flavor(&state.flavors, "hardware", &hardware)?;
    if let Some(s) = spec.sleep_time {
        check_sleep_time("sleepTimeSeconds", s)?;
    }
    let mut variables = variables_from.cloned().unwrap_or_default();
    for (i, kv) in spec.variables.iter().enumerate() {
        check_key_value(&format!("variables[{i}]"), kv)?;
        variables.insert(
            kv.key.clone(),
            Variable {
                value: kv.value.clone(),
                description: kv.description.clone(),
                updated_at: at,
            },
        );
    }
    let mut secrets = BTreeMap::new();
    for (i, kv) in spec.secrets.iter().enumerate() {
        check_key_value(&format!("secrets[{i}]"), kv)?;
        secrets.insert(
            kv.key.clone(),
            Secret {
                value: SecretValue::new(kv.value.clone()),
                description: kv.description.clone(),
                updated_at: at,
            },
        );
    }
    Ok(SpaceState {
        sdk: spec.sdk.clone(),
        hardware_requested: hardware,
        hardware_current: None,
        sleep_time: spec.sleep_time,
        stage: Stage::NoAppFile,
        error_message: None,
        variables,
        secrets,
        subdomain: assign_subdomain(state, id)?,
        duplicated_from: None,
        restarts: 0,
        factory_restarts: 0,
        image: None,
        build: None,
        app_file: None,
        headers: Vec::new(),
    })
}

fn insert_repo(
    state: &mut State,
    uid: &str,
    kind: RepoKind,
    id: &str,
    private: bool,
    space: Option<SpaceState>,
    at: Millis,
) {
    let key = repo_key(kind, id);
    if let Some(space) = &space {
        state
            .subdomains
            .insert(space.subdomain.clone(), key.clone());
    }
    let repo = Repo {
        uid: uid.to_owned(),
        kind,
        id: id.to_owned(),
        private,
        created_at: at,
        updated_at: at,
        sha: None,
        space,
        git: RepoGit::default(),
    };
    state.repos.insert(key, repo);
}

fn insert_token(state: &mut State, token: &NewToken, at: Millis) {
    let stored = Token {
        id: token.id.clone(),
        owner: token.owner.to_ascii_lowercase(),
        display_name: token.display_name.clone(),
        role: token.role,
        secret_hash: token.secret_hash.clone(),
        created_at: at,
        expires_at: token.expires_at,
        revoked: false,
    };
    state.tokens.insert(token.secret_hash.clone(), stored);
}

/// Image names: 1 to 128 of lowercase letters, digits and `._-/:@`, starting with a letter or digit.
pub fn check_image_name(name: &str) -> Result<(), ApplyError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:@".contains(c);
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 128 || !starts_ok || !name.chars().all(ok_char) {
        return Err(ApplyError::invalid(
            "name",
            format!(
                "`{name}` is not an image name: 1 to 128 of lowercase letters, digits and `._-/:@`, \
                 starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}
