//! Rules for git repos in the replicated state: ref names and object ids, and what a new commit on a Space's
//! main branch does to the Space (build it, or say why it cannot).

use spacedock_shared::flavor::Catalog;
use spacedock_shared::space_config::{Sdk, validate_readme};

use crate::command::{RefUpdate, SpaceCommit};
use crate::error::ApplyError;
use crate::state::{MAX_REWRITES, Millis, Repo, Rewrite, Stage};

/// The branch a Space builds from and `sha` follows.
pub const MAIN: &str = "refs/heads/main";

/// Whether `s` is a full lowercase sha1 object id.
pub fn is_object_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a full ref name by git's rules (`git check-ref-format`), limited to `refs/heads/` and `refs/tags/`.
pub fn check_ref_name(name: &str) -> Result<(), String> {
    let rest = name
        .strip_prefix("refs/heads/")
        .or_else(|| name.strip_prefix("refs/tags/"))
        .ok_or_else(|| format!("`{name}`: only refs/heads/ and refs/tags/ may be pushed"))?;
    let bad = |why: &str| Err(format!("`{name}` is not a valid ref name: {why}"));
    if rest.is_empty() || name.len() > 255 {
        return bad("empty or longer than 255 bytes");
    }
    if name.bytes().any(|b| {
        b < 0x20 || b == 0x7f || matches!(b, b' ' | b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\')
    }) {
        return bad("it has a space, a control character or one of ~^:?*[\\");
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") || name.ends_with('/') {
        return bad("it has `..`, `@{`, `//` or ends with `/`");
    }
    if name.ends_with(".lock") || name.ends_with('.') {
        return bad("it ends with `.lock` or `.`");
    }
    if rest.split('/').any(|part| part.starts_with('.')) {
        return bad("a part starts with `.`");
    }
    Ok(())
}

/// Checks a file path inside a repo: relative, `/`-separated, no empty, `.` or `..` parts, nothing under `.git/`.
pub fn check_repo_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path `{path}` {why}"));
    if path.is_empty() || path.len() > 4096 {
        return bad("is empty or longer than 4096 bytes");
    }
    if path.starts_with('/') || path.contains('\\') {
        return bad("must be relative and use `/`");
    }
    if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return bad("has a control character");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("has an empty, `.` or `..` part");
        }
        if part.eq_ignore_ascii_case(".git") {
            return bad("is inside `.git`");
        }
    }
    Ok(())
}

pub use spacedock_shared::lfs::{lfs_pointer, parse_lfs_pointer};

/// What a new main commit of a Space means, from its README.md (if any) and whether a file exists in it.
pub fn space_commit(
    readme: Option<&[u8]>,
    has_file: impl Fn(&str) -> bool,
    catalog: &Catalog,
    build: &str,
) -> SpaceCommit {
    let Some(readme) = readme else {
        return SpaceCommit::ConfigError {
            message: "README.md is missing: a Space is configured by its front matter".into(),
        };
    };
    let report = validate_readme(readme, catalog);
    let Some(config) = report.config else {
        let message = report
            .errors()
            .map(|p| p.render("README.md"))
            .collect::<Vec<_>>()
            .join("\n");
        return SpaceCommit::ConfigError { message };
    };
    let needed = match config.sdk {
        Sdk::Docker => "Dockerfile",
        _ => config.effective_app_file().unwrap_or("app.py"),
    };
    if !has_file(needed) {
        return SpaceCommit::NoAppFile {
            sdk: config.sdk.as_str().to_owned(),
            message: format!(
                "{needed} is not in the repo; a {} Space needs it",
                config.sdk.as_str()
            ),
        };
    }
    let mut headers: Vec<(String, String)> = config
        .custom_headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if config.disable_embedding {
        headers.push((
            "content-security-policy".into(),
            "frame-ancestors 'none'".into(),
        ));
        headers.push(("x-frame-options".into(), "DENY".into()));
    }
    match (config.sdk, config.effective_app_file()) {
        (Sdk::Static, Some(app_file)) if config.app_build_command.is_none() => SpaceCommit::Serve {
            app_file: app_file.to_owned(),
            headers,
        },
        _ => SpaceCommit::Build {
            sdk: config.sdk.as_str().to_owned(),
            build: build.to_owned(),
            headers,
        },
    }
}

/// Checks an `UpdateRefs` against the repo as it is: well-formed names and ids, and every ref still where the
/// pusher saw it (else `Conflict`: someone pushed in between).
pub fn check_updates(
    repo: &Repo,
    updates: &[RefUpdate],
    pack: Option<&str>,
    rewrites: &[String],
    space: Option<&SpaceCommit>,
) -> Result<(), ApplyError> {
    if updates.is_empty() {
        return Err(ApplyError::invalid("updates", "nothing to update"));
    }
    for (i, u) in updates.iter().enumerate() {
        check_ref_name(&u.name).map_err(|m| ApplyError::invalid("ref", m))?;
        if updates[..i].iter().any(|o| o.name == u.name) {
            return Err(ApplyError::invalid(
                "ref",
                format!("`{}` is updated twice", u.name),
            ));
        }
        for id in [&u.old, &u.new].into_iter().flatten() {
            if !is_object_id(id) {
                return Err(ApplyError::invalid(
                    "ref",
                    format!("`{id}` is not an object id"),
                ));
            }
        }
        let current = repo.git.refs.get(&u.name);
        if current != u.old.as_ref() {
            return Err(ApplyError::Conflict {
                message: format!(
                    "{} moved: expected {}, it is at {}; fetch and try again",
                    u.name,
                    u.old.as_deref().unwrap_or("no ref"),
                    current.map_or("no ref", String::as_str)
                ),
                url_path: None,
            });
        }
    }
    if let Some(pack) = pack {
        let hex = pack.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApplyError::invalid(
                "pack",
                format!("`{pack}` is not a sha256 digest"),
            ));
        }
    }
    for name in rewrites {
        if !updates
            .iter()
            .any(|u| &u.name == name && u.old.is_some() && u.new.is_some())
        {
            return Err(ApplyError::invalid(
                "rewrites",
                format!("`{name}` is not an update of an existing ref"),
            ));
        }
    }
    let main_moves = updates.iter().any(|u| u.name == MAIN && u.new.is_some());
    if space.is_some() && (repo.space.is_none() || !main_moves) {
        return Err(ApplyError::invalid(
            "space",
            "only a new main commit of a Space is built",
        ));
    }
    Ok(())
}

/// How many packs a repo gathers before the leader compacts them into one.
pub const COMPACT_AT: usize = 16;

/// Replaces `replaced` (all still the repo's packs) by `pack`, which the proposer built to hold every object
/// the repo's refs reached; packs added since it looked stay.
pub fn compact(repo: &mut Repo, replaced: &[String], pack: &str) -> Result<(), ApplyError> {
    if replaced.is_empty() || replaced.iter().any(|p| !repo.git.packs.contains(p)) {
        return Err(ApplyError::Conflict {
            message: "the packs to replace are not all the repo's any more".into(),
            url_path: None,
        });
    }
    let hex = pack.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApplyError::invalid(
            "pack",
            format!("`{pack}` is not a sha256 digest"),
        ));
    }
    let mut packs = vec![pack.to_owned()];
    packs.extend(
        repo.git
            .packs
            .iter()
            .filter(|p| !replaced.contains(p) && p.as_str() != pack)
            .cloned(),
    );
    repo.git.packs = packs;
    Ok(())
}

/// Applies a checked `UpdateRefs`.
pub fn update_refs(
    repo: &mut Repo,
    updates: &[RefUpdate],
    pack: &Option<String>,
    rewrites: &[String],
    space: Option<&SpaceCommit>,
    by: &str,
    at: Millis,
) {
    for u in updates {
        match &u.new {
            Some(new) => repo.git.refs.insert(u.name.clone(), new.clone()),
            None => repo.git.refs.remove(&u.name),
        };
        if let (true, Some(old), Some(new)) = (rewrites.contains(&u.name), &u.old, &u.new) {
            repo.git.rewrites.push(Rewrite {
                ref_name: u.name.clone(),
                old: old.clone(),
                new: new.clone(),
                by: by.to_owned(),
                at,
            });
        }
    }
    let excess = repo.git.rewrites.len().saturating_sub(MAX_REWRITES);
    repo.git.rewrites.drain(..excess);
    if let Some(pack) = pack
        && !repo.git.packs.contains(pack)
    {
        repo.git.packs.push(pack.clone());
    }
    repo.sha = repo.git.refs.get(MAIN).cloned();
    repo.updated_at = at;
    let (Some(_), Some(s), Some(space)) = (&repo.sha, space, repo.space.as_mut()) else {
        return;
    };
    space.app_file = None;
    match s {
        SpaceCommit::Build {
            sdk,
            build,
            headers,
        } => {
            space.sdk = sdk.clone();
            space.headers = headers.clone();
            space.build = Some(build.clone());
            space.error_message = None;
            space.stage = if space.stage == Stage::Running {
                Stage::RunningBuilding
            } else {
                Stage::Building
            };
        }
        SpaceCommit::ConfigError { message } => {
            space.build = None;
            space.stage = Stage::ConfigError;
            space.error_message = Some(message.clone());
        }
        SpaceCommit::NoAppFile { sdk, message } => {
            space.sdk = sdk.clone();
            space.build = None;
            space.stage = Stage::NoAppFile;
            space.error_message = Some(message.clone());
        }
        SpaceCommit::Serve { app_file, headers } => {
            space.headers = headers.clone();
            space.sdk = "static".into();
            space.build = None;
            space.image = None;
            space.stage = Stage::Running;
            space.error_message = None;
            space.app_file = Some(app_file.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_gits_rules() {
        for good in [
            "refs/heads/main",
            "refs/heads/feature/x-1",
            "refs/tags/v1.0",
        ] {
            assert_eq!(check_ref_name(good), Ok(()), "{good}");
        }
        for bad in [
            "main",
            "refs/remotes/origin/main",
            "refs/heads/",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/x.lock",
            "refs/heads/.hidden",
            "refs/heads/a//b",
            "refs/heads/a@{1}",
            "refs/heads/a\u{7f}",
        ] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_paths_stay_inside_the_repo() {
        for good in ["app.py", "src/a b.txt", "models/.cache/x", ".gitattributes"] {
            assert_eq!(check_repo_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            ".git/config",
            "x/.GIT/y",
            "a\\b",
            "a\nb",
        ] {
            assert!(check_repo_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_ids_are_forty_lowercase_hex() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(!is_object_id(&"A".repeat(40)));
        assert!(!is_object_id(&"a".repeat(39)));
    }

    #[test]
    fn a_space_commit_builds_or_says_why_not() {
        let catalog = Catalog::huggingface();
        let readme = b"---\nsdk: gradio\n---\n";
        assert_eq!(
            space_commit(Some(readme), |f| f == "app.py", &catalog, "b1"),
            SpaceCommit::Build {
                sdk: "gradio".into(),
                build: "b1".into(),
                headers: vec![]
            }
        );
        let SpaceCommit::NoAppFile { message, .. } =
            space_commit(Some(readme), |_| false, &catalog, "b1")
        else {
            panic!("expected NoAppFile");
        };
        assert!(message.contains("app.py"), "{message}");
        assert_eq!(
            space_commit(
                Some(b"---\nsdk: static\napp_file: site/main.html\n---\n"),
                |f| f == "site/main.html",
                &catalog,
                "b1"
            ),
            SpaceCommit::Serve {
                app_file: "site/main.html".into(),
                headers: vec![]
            }
        );
        let framed = b"---\nsdk: static\ndisable_embedding: true\ncustom_headers:\n  cross-origin-opener-policy: same-origin\n---\n";
        let SpaceCommit::Serve { headers, .. } =
            space_commit(Some(framed), |_| true, &catalog, "b1")
        else {
            panic!("expected Serve");
        };
        assert_eq!(
            headers,
            vec![
                (
                    "cross-origin-opener-policy".to_owned(),
                    "same-origin".to_owned()
                ),
                (
                    "content-security-policy".to_owned(),
                    "frame-ancestors 'none'".to_owned()
                ),
                ("x-frame-options".to_owned(), "DENY".to_owned()),
            ]
        );
        let docker = b"---\nsdk: docker\n---\n";
        assert!(matches!(
            space_commit(Some(docker), |f| f == "app.py", &catalog, "b1"),
            SpaceCommit::NoAppFile { .. }
        ));
        let SpaceCommit::ConfigError { message } =
            space_commit(Some(b"---\nsdk: rails\n---\n"), |_| true, &catalog, "b1")
        else {
            panic!("expected ConfigError");
        };
        assert!(message.starts_with("README.md:2: sdk:"), "{message}");
        assert!(matches!(
            space_commit(None, |_| true, &catalog, "b1"),
            SpaceCommit::ConfigError { .. }
        ));
    }
}
