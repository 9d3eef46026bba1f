//! Repo ids (`namespace/name`) by the Hub's rules, and the DNS subdomain each Space is served on.

use std::fmt;

/// Longest repo name or namespace the Hub accepts.
pub const MAX_NAME_LEN: usize = 96;
/// Longest DNS label.
pub const MAX_SUBDOMAIN_LEN: usize = 63;

/// A validated `namespace/name` repo id. Case is kept as written; comparisons for uniqueness use `key()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoId {
    namespace: String,
    name: String,
}

/// Why a repo id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repo id `{0}` must be `namespace/name`")]
    NoNamespace(String),
    #[error("repo id `{0}` has more than one `/`")]
    TooManySlashes(String),
    #[error("{part} `{value}` is empty")]
    Empty { part: &'static str, value: String },
    #[error("{part} `{value}` is longer than {MAX_NAME_LEN} characters")]
    TooLong { part: &'static str, value: String },
    #[error("{part} `{value}` may only use ASCII letters, digits, `-`, `_` and `.`")]
    BadCharacter { part: &'static str, value: String },
    #[error("{part} `{value}` cannot start or end with `-` or `.`")]
    BadEdge { part: &'static str, value: String },
    #[error("{part} `{value}` cannot contain `--` or `..`")]
    DoubledSeparator { part: &'static str, value: String },
    #[error("repo id `{0}` cannot end with `.git`")]
    GitSuffix(String),
}

impl RepoId {
    /// Parses a strict `namespace/name` id (Spaces always have a namespace).
    pub fn parse(id: &str) -> Result<RepoId, NameError> {
        let (namespace, name) = match id.split_once('/') {
            Some(parts) => parts,
            None => return Err(NameError::NoNamespace(id.to_owned())),
        };
        if name.contains('/') {
            return Err(NameError::TooManySlashes(id.to_owned()));
        }
        check_part("namespace", namespace)?;
        check_part("name", name)?;
        if name.ends_with(".git") {
            return Err(NameError::GitSuffix(id.to_owned()));
        }
        Ok(RepoId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The case-folded id that two repos may not share (`User/App` and `user/app` are the same repo).
    pub fn key(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }

    /// The subdomain this Space asks for: `namespace-name`, lowercase, with `_` and `.` turned into `-`,
    /// shortened with a hash suffix when it would not fit in one DNS label.
    pub fn subdomain(&self) -> String {
        let base: String = format!("{}-{}", self.namespace, self.name)
            .chars()
            .map(|c| match c {
                '_' | '.' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        let base = base.trim_matches('-');
        if base.len() <= MAX_SUBDOMAIN_LEN {
            base.to_owned()
        } else {
            self.with_hash_suffix(base)
        }
    }

    /// Picks this Space's subdomain given which ones are taken. The first Space to ask for a subdomain keeps it;
    /// a later Space whose id maps to the same one (`a-b/c` and `a/b-c`) gets the same name with a suffix made
    /// from a hash of its own id, so the outcome does not depend on anything but the ids and the order of creation.
    pub fn assign_subdomain(&self, is_taken: impl Fn(&str) -> bool) -> Result<String, String> {
        let preferred = self.subdomain();
        if !is_taken(&preferred) {
            return Ok(preferred);
        }
        let fallback = self.with_hash_suffix(&preferred);
        if !is_taken(&fallback) {
            return Ok(fallback);
        }
        Err(fallback)
    }

    fn with_hash_suffix(&self, base: &str) -> String {
        let hash = blake3::hash(self.key().as_bytes()).to_hex();
        let keep = MAX_SUBDOMAIN_LEN - 9;
        let stem = base[..base.len().min(keep)].trim_end_matches('-');
        format!("{stem}-{}", &hash.as_str()[..8])
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for RepoId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RepoId::parse(s)
    }
}

/// Checks a model or dataset reference, which may omit the namespace (`gpt2`, `squad`) as on the Hub.
pub fn check_model_or_dataset_id(id: &str) -> Result<(), NameError> {
    match id.split_once('/') {
        Some(_) => RepoId::parse(id).map(|_| ()),
        None => {
            check_part("name", id)?;
            if id.ends_with(".git") {
                return Err(NameError::GitSuffix(id.to_owned()));
            }
            Ok(())
        }
    }
}

/// Checks a user or organization name.
pub fn check_namespace(namespace: &str) -> Result<(), NameError> {
    check_part("namespace", namespace)
}

fn check_part(part: &'static str, value: &str) -> Result<(), NameError> {
    let err = |make: fn(&'static str, String) -> NameError| Err(make(part, value.to_owned()));
    if value.is_empty() {
        return err(|part, value| NameError::Empty { part, value });
    }
    if value.len() > MAX_NAME_LEN {
        return err(|part, value| NameError::TooLong { part, value });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err(|part, value| NameError::BadCharacter { part, value });
    }
    if value.starts_with(['-', '.']) || value.ends_with(['-', '.']) {
        return err(|part, value| NameError::BadEdge { part, value });
    }
    if value.contains("--") || value.contains("..") {
        return err(|part, value| NameError::DoubledSeparator { part, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_hub_ids() {
        for id in [
            "user/my-space",
            "Org_1/Space.v2",
            "a/b",
            "NimaBoscarino/hotdog-gradio",
        ] {
            assert!(RepoId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_bad_ids() {
        let cases = [
            ("nospace", "must be `namespace/name`"),
            ("a/b/c", "more than one `/`"),
            ("/b", "namespace `` is empty"),
            ("a/", "name `` is empty"),
            ("a/-b", "cannot start or end"),
            ("a/b.", "cannot start or end"),
            ("a/b--c", "`--` or `..`"),
            ("a/b..c", "`--` or `..`"),
            ("a/b c", "ASCII letters"),
            ("a/ümlaut", "ASCII letters"),
            ("a/b.git", "`.git`"),
        ];
        for (id, want) in cases {
            let err = RepoId::parse(id).unwrap_err().to_string();
            assert!(err.contains(want), "{id}: {err}");
        }
        let long = format!("a/{}", "x".repeat(97));
        assert!(
            RepoId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 96")
        );
        assert!(RepoId::parse(&format!("a/{}", "x".repeat(96))).is_ok());
    }

    #[test]
    fn models_may_omit_namespace() {
        assert!(check_model_or_dataset_id("gpt2").is_ok());
        assert!(check_model_or_dataset_id("openai/whisper-tiny").is_ok());
        assert!(check_model_or_dataset_id("bad id").is_err());
    }

    #[test]
    fn subdomains_follow_the_hub() {
        let sub = |id: &str| RepoId::parse(id).unwrap().subdomain();
        assert_eq!(
            sub("NimaBoscarino/hotdog-gradio"),
            "nimaboscarino-hotdog-gradio"
        );
        assert_eq!(sub("user/tmp_test_space"), "user-tmp-test-space");
        assert_eq!(sub("org/app.v2"), "org-app-v2");
    }

    #[test]
    fn long_subdomains_fit_one_label() {
        let id = RepoId::parse(&format!("{}/{}", "n".repeat(60), "s".repeat(60))).unwrap();
        let sub = id.subdomain();
        assert!(sub.len() <= MAX_SUBDOMAIN_LEN, "{sub}");
        let other = RepoId::parse(&format!("{}/{}t", "n".repeat(60), "s".repeat(59))).unwrap();
        assert_ne!(sub, other.subdomain());
    }

    #[test]
    fn collisions_get_a_stable_suffix() {
        let first = RepoId::parse("a-b/c").unwrap();
        let second = RepoId::parse("a/b-c").unwrap();
        assert_eq!(first.subdomain(), second.subdomain());
        let taken = first.assign_subdomain(|_| false).unwrap();
        assert_eq!(taken, "a-b-c");
        let got = second.assign_subdomain(|s| s == taken).unwrap();
        assert!(
            got.starts_with("a-b-c-") && got.len() == "a-b-c-".len() + 8,
            "{got}"
        );
        assert_eq!(got, second.assign_subdomain(|s| s == taken).unwrap());
        assert!(second.assign_subdomain(|_| true).is_err());
    }

    proptest! {
        #[test]
        fn subdomain_is_a_dns_label(ns in "[A-Za-z0-9_][A-Za-z0-9_]{0,95}", name in "[A-Za-z0-9][A-Za-z0-9_]{0,95}") {
            if let Ok(id) = RepoId::parse(&format!("{ns}/{name}")) {
                for sub in [id.subdomain(), id.with_hash_suffix(&id.subdomain())] {
                    prop_assert!(sub.len() <= MAX_SUBDOMAIN_LEN);
                    prop_assert!(sub.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                    prop_assert!(!sub.starts_with('-') && !sub.ends_with('-'));
                }
            }
        }
    }
}
