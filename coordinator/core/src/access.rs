//! Who may do what: token checks, namespace rights, visibility of private repos, and input rules shared by the API
//! (for early, friendly errors) and `apply` (the authority).

use crate::error::ApplyError;
use crate::state::{JoinToken, Millis, NodeRole, Repo, Role, State, Token, User};

/// Largest variable or secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest variable or secret key.
pub const MAX_KEY_LEN: usize = 256;
/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Hex blake3 hash of a token secret, the form tokens are stored and looked up in.
pub fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub user: &'a User,
    pub token: &'a Token,
}

/// Finds the live token with this hash: present, not revoked, not expired at `now`, owner still there.
pub fn authenticate<'a>(
    state: &'a State,
    token_hash: &str,
    now: Millis,
) -> Result<Principal<'a>, ApplyError> {
    let invalid = |why: &str| {
        ApplyError::Unauthorized(format!(
            "Invalid credentials in Authorization header: {why}"
        ))
    };
    let token = state
        .tokens
        .get(token_hash)
        .ok_or_else(|| invalid("unknown token"))?;
    if token.revoked {
        return Err(invalid("the token was revoked"));
    }
    if token.expires_at.is_some_and(|at| at <= now) {
        return Err(invalid("the token has expired"));
    }
    let user = state
        .users
        .get(&token.owner)
        .ok_or_else(|| invalid("the token's user no longer exists"))?;
    Ok(Principal { user, token })
}

impl Principal<'_> {
    /// A cluster operator acting with an admin token.
    pub fn is_cluster_admin(&self) -> bool {
        self.user.is_admin && self.token.role == Role::Admin
    }

    /// The caller's role in a namespace (its own, or an organization it belongs to), capped by the token's role.
    pub fn role_in(&self, state: &State, namespace: &str) -> Option<Role> {
        if self.is_cluster_admin() {
            return Some(Role::Admin);
        }
        let role = if namespace.eq_ignore_ascii_case(&self.user.name) {
            Some(Role::Admin)
        } else {
            state.org(namespace).and_then(|org| {
                org.members
                    .get(&self.user.name.to_ascii_lowercase())
                    .copied()
            })
        };
        role.map(|r| r.min(self.token.role))
    }

    pub fn can_write(&self, state: &State, namespace: &str) -> bool {
        self.role_in(state, namespace)
            .is_some_and(|r| r >= Role::Write)
    }
}

/// Whether a caller (or an anonymous one) may know a repo exists.
pub fn can_see(state: &State, principal: Option<&Principal<'_>>, repo: &Repo) -> bool {
    !repo.private || principal.is_some_and(|p| p.role_in(state, repo.namespace()).is_some())
}

/// The live join token with this secret's hash, for a node joining as `role` at `now`.
pub fn check_join_token<'a>(
    state: &'a State,
    secret_hash: &str,
    role: NodeRole,
    now: Millis,
) -> Result<&'a JoinToken, ApplyError> {
    let invalid = |why: &str| ApplyError::Unauthorized(format!("join token refused: {why}"));
    let token = state
        .join_tokens
        .get(secret_hash)
        .ok_or_else(|| invalid("unknown token"))?;
    if token.revoked {
        return Err(invalid("the token was revoked"));
    }
    if token.expires_at <= now {
        return Err(invalid("the token has expired"));
    }
    if token.role != role {
        return Err(invalid(&format!(
            "the token is for {} nodes, not {}",
            token.role.as_str(),
            role.as_str()
        )));
    }
    Ok(token)
}

/// Checks a variable or secret key: an environment variable name.
pub fn check_env_key(field: &str, key: &str) -> Result<(), ApplyError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApplyError::invalid(
            field,
            format!(
                "`{}` is not an environment variable name (letters, digits and `_`, not starting with a digit, \
                 at most {MAX_KEY_LEN} characters)",
                key.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Checks the size of a variable or secret value and its description.
pub fn check_value(field: &str, value: &str, description: Option<&str>) -> Result<(), ApplyError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApplyError::invalid(
            field,
            format!(
                "the value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            ),
        ));
    }
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS) {
        return Err(ApplyError::invalid(
            field,
            format!("the description is longer than {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

/// Checks a sleep time in seconds: `-1` (never) or a positive number.
pub fn check_sleep_time(field: &str, seconds: i64) -> Result<(), ApplyError> {
    if seconds == -1 || seconds > 0 {
        Ok(())
    } else {
        Err(ApplyError::invalid(
            field,
            format!("{seconds} is not a sleep time: use -1 (never) or a number of seconds"),
        ))
    }
}
