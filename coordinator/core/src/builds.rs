//! The build queue in the replicated state: a Space's new commit queues a build (superseding the one before
//! it); a builder takes the oldest queued build under a lease it renews while it works, and another builder
//! may take a build whose lease ran out (its builder died), up to `MAX_ATTEMPTS` times; the result sets the
//! Space's image and APP_STARTING, or BUILD_ERROR with the failing step.

use crate::command::BuildOutcome;
use crate::error::ApplyError;
use crate::state::{AllocationPhase, Build, BuildState, Millis, SpaceImage, Stage, State};

/// How many times builders may take one build before the cluster gives up on it.
pub const MAX_ATTEMPTS: u32 = 3;

/// How many finished builds of each Space the state keeps (older ones are dropped as new ones are queued).
pub const KEEP_DONE: usize = 10;

/// Queues build `id` of `commit` for the Space under repo key `space`; an unfinished earlier build of it is
/// superseded. The Space's own fields (stage, `build`) are the caller's.
pub fn enqueue(
    state: &mut State,
    id: &str,
    space: &str,
    commit: &str,
    sdk: &str,
    factory: bool,
    at: Millis,
) {
    for build in state.builds.values_mut() {
        if build.space == space && !build.state.is_done() {
            build.state = BuildState::Superseded;
            build.updated_at = at;
        }
    }
    let mut done: Vec<(Millis, String)> = state
        .builds
        .values()
        .filter(|b| b.space == space && b.state.is_done())
        .map(|b| (b.updated_at, b.id.clone()))
        .collect();
    done.sort();
    let excess = done.len().saturating_sub(KEEP_DONE - 1);
    for (_, old) in done.into_iter().take(excess) {
        state.builds.remove(&old);
    }
    state.builds.insert(
        id.to_owned(),
        Build {
            id: id.to_owned(),
            space: space.to_owned(),
            commit: commit.to_owned(),
            sdk: sdk.to_owned(),
            factory,
            state: BuildState::Queued,
            attempts: 0,
            created_at: at,
            updated_at: at,
        },
    );
}

/// Whether a builder may take the build now: queued, or running under a lease that ran out, with attempts left.
pub fn takeable(build: &Build, now: Millis) -> bool {
    let free = match &build.state {
        BuildState::Queued => true,
        BuildState::Running { lease_until, .. } => *lease_until < now,
        _ => false,
    };
    free && build.attempts < MAX_ATTEMPTS
}

/// The build a free builder should take next: the oldest takeable one.
pub fn next(state: &State, now: Millis) -> Option<&Build> {
    state
        .builds
        .values()
        .filter(|b| takeable(b, now))
        .min_by_key(|b| (b.created_at, b.id.as_str()))
}

/// Builds whose lease ran out after their last attempt: the cluster abandons them.
pub fn lost(state: &State, now: Millis) -> Vec<&Build> {
    state
        .builds
        .values()
        .filter(|b| {
            b.attempts >= MAX_ATTEMPTS
                && matches!(&b.state, BuildState::Running { lease_until, .. } if *lease_until < now)
        })
        .collect()
}

/// What a builder needs for build `id`: the Space, its commit, the packs holding its objects, its variables
/// and secrets.
pub fn job(state: &State, id: &str) -> Option<spacedock_shared::wire::BuildJob> {
    let build = state.builds.get(id)?;
    let repo = state.repos.get(&build.space)?;
    let (variables, secrets) = repo.space.as_ref()?.env_vars();
    Some(spacedock_shared::wire::BuildJob {
        id: build.id.clone(),
        space_id: repo.id.clone(),
        commit: build.commit.clone(),
        packs: repo.git.packs.clone(),
        no_cache: build.factory,
        variables,
        secrets,
        hub_endpoint: String::new(),
    })
}

fn build_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Build, ApplyError> {
    state
        .builds
        .get_mut(id)
        .ok_or_else(|| ApplyError::NotFound {
            what: "build",
            name: id.to_owned(),
        })
}

fn conflict(message: String) -> ApplyError {
    ApplyError::Conflict {
        message,
        url_path: None,
    }
}

pub fn claim(
    state: &mut State,
    id: &str,
    builder: &str,
    lease_until: Millis,
    at: Millis,
) -> Result<(), ApplyError> {
    let build = build_mut(state, id)?;
    if !takeable(build, at) {
        return Err(conflict(format!("build {id} cannot be taken now")));
    }
    build.attempts += 1;
    build.state = BuildState::Running {
        builder: builder.to_owned(),
        lease_until,
    };
    build.updated_at = at;
    Ok(())
}

/// The build, if `builder` holds it.
fn held<'a>(state: &'a mut State, id: &str, builder: &str) -> Result<&'a mut Build, ApplyError> {
    let build = build_mut(state, id)?;
    match &build.state {
        BuildState::Running { builder: b, .. } if b == builder => Ok(build),
        BuildState::Superseded => Err(conflict(format!(
            "build {id} was superseded by a newer commit"
        ))),
        _ => Err(conflict(format!("build {id} is not held by {builder}"))),
    }
}

pub fn renew(
    state: &mut State,
    id: &str,
    builder: &str,
    lease_until: Millis,
    at: Millis,
) -> Result<(), ApplyError> {
    let build = held(state, id, builder)?;
    build.state = BuildState::Running {
        builder: builder.to_owned(),
        lease_until,
    };
    build.updated_at = at;
    Ok(())
}

pub fn finish(
    state: &mut State,
    id: &str,
    builder: &str,
    outcome: &BuildOutcome,
    at: Millis,
) -> Result<(), ApplyError> {
    held(state, id, builder)?;
    let image = match outcome {
        BuildOutcome::Succeeded {
            image,
            port,
            startup_timeout_s,
            built,
        } => {
            if *port == 0 || *startup_timeout_s == 0 {
                return Err(ApplyError::invalid(
                    "outcome",
                    "a port and a startup timeout above 0",
                ));
            }
            let stored = match built {
                Some(built) => {
                    let prefix = spacedock_shared::wire::BUILT_IMAGE_PREFIX;
                    if built.name != *image || !image.starts_with(prefix) {
                        return Err(ApplyError::invalid(
                            "outcome",
                            format!("a built image is named `{prefix}...` and is the result"),
                        ));
                    }
                    if built.layers.is_empty() {
                        return Err(ApplyError::invalid("layers", "an image needs a layer"));
                    }
                    let mut built = built.clone();
                    built.created_at = at;
                    let id = built.id.clone();
                    // Checked everything first: the state changes only from here on.
                    state.images.insert(built.name.clone(), built);
                    id
                }
                None => state
                    .images
                    .get(image)
                    .ok_or_else(|| ApplyError::NotFound {
                        what: "image",
                        name: image.clone(),
                    })?
                    .id
                    .clone(),
            };
            Some(SpaceImage {
                name: image.clone(),
                id: stored,
                port: *port,
                startup_timeout_s: *startup_timeout_s,
            })
        }
        BuildOutcome::Failed { .. } => None,
    };
    let build = build_mut(state, id)?;
    build.state = match outcome {
        BuildOutcome::Succeeded { image, .. } => BuildState::Succeeded {
            image: image.clone(),
        },
        BuildOutcome::Failed { step, message } => BuildState::Failed {
            step: step.clone(),
            message: message.clone(),
        },
    };
    build.updated_at = at;
    let space_key = build.space.clone();
    let error = match outcome {
        BuildOutcome::Failed { step, message } => Some(format!("{step}: {message}")),
        BuildOutcome::Succeeded { .. } => None,
    };
    settle(state, &space_key, id, image, error, at);
    Ok(())
}

pub fn abandon(state: &mut State, id: &str, reason: &str, at: Millis) -> Result<(), ApplyError> {
    let build = build_mut(state, id)?;
    if build.state.is_done() {
        return Err(conflict(format!("build {id} is already done")));
    }
    build.state = BuildState::Failed {
        step: "build".into(),
        message: reason.to_owned(),
    };
    build.updated_at = at;
    let space_key = build.space.clone();
    settle(
        state,
        &space_key,
        id,
        None,
        Some(format!("build: {reason}")),
        at,
    );
    Ok(())
}

/// Applies a finished build to its Space, if it is still the Space's current build.
fn settle(
    state: &mut State,
    space_key: &str,
    id: &str,
    image: Option<SpaceImage>,
    error: Option<String>,
    at: Millis,
) {
    // A rebuild that made the image already running (an unchanged tree) leaves the Space running.
    let running_image = state
        .allocations
        .values()
        .find(|a| a.space == space_key && a.phase == AllocationPhase::Running)
        .map(|a| a.image_id.clone());
    let Some(repo) = state.repos.get_mut(space_key) else {
        return;
    };
    let Some(space) = repo
        .space
        .as_mut()
        .filter(|s| s.build.as_deref() == Some(id))
    else {
        return;
    };
    repo.updated_at = at;
    space.build = None;
    match (image, error) {
        (Some(image), _) => {
            let unchanged = space.image.as_ref() == Some(&image)
                && running_image.as_deref() == Some(image.id.as_str());
            space.stage = if unchanged {
                Stage::Running
            } else {
                Stage::AppStarting
            };
            space.image = Some(image);
            space.error_message = None;
        }
        (None, error) => {
            space.stage = Stage::BuildError;
            space.error_message = error;
        }
    }
}
