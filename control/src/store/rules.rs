//! The registry's rules, once for both backends: what may be done (the last admin stays, a
//! node's name is unique, a token is used once and not after it expires) and the words a
//! refusal says. Each backend finds the facts in its own transaction and asks here.

use proto::api::Target;

use super::{EnrollTokenProblem, StoreError, TokenCheck, tags_from};

type Result<T> = std::result::Result<T, StoreError>;

pub fn no_user(name: &str) -> StoreError {
    StoreError::NotFound(format!("no user named {name:?}"))
}

pub fn user_exists(name: &str) -> StoreError {
    StoreError::Conflict(format!("a user named {name:?} already exists"))
}

/// Whether the user `name` may be removed: `admin` is whether it is one (none: there is no
/// such user), `admins` how many admins there are, it included.
pub fn may_remove_user(name: &str, admin: Option<bool>, admins: usize) -> Result<()> {
    match admin {
        None => Err(no_user(name)),
        Some(true) if admins <= 1 => {
            Err(StoreError::Refused(format!("{name:?} is the last admin and cannot be removed")))
        }
        Some(_) => Ok(()),
    }
}

pub fn no_grant(user: &str, on: &Target) -> StoreError {
    StoreError::NotFound(format!("{user:?} has no grant on {on}; `openbox user ls` shows grants"))
}

/// Whether replacing a grant whose isolation kinds were `earlier` (none: there was none)
/// with `now` may allow less than before: then certificates issued under it are cut off.
pub fn grant_narrowed(earlier: Option<&str>, now: &str) -> bool {
    earlier.is_some_and(|e| e != now)
}

pub fn no_unused_enroll_token(id: &str) -> StoreError {
    StoreError::NotFound(format!("no unused enrollment token {id:?}"))
}

/// An enrollment token as stored (its tags, expiry, whether used) judged at `now`.
pub fn token_state(tags: String, expires_at: Option<u64>, used: bool, now: u64) -> TokenCheck {
    if used {
        return Err(EnrollTokenProblem::Used);
    }
    if expires_at.is_some_and(|e| now >= e) {
        return Err(EnrollTokenProblem::Expired);
    }
    Ok(tags_from(tags))
}

/// The name a new node gets: `wanted` when free; taken, a refusal when it was asked for
/// exactly (`--name`), else the first free `wanted-2`, `wanted-3`, …
pub fn node_name(wanted: &str, exact: bool, mut taken: impl FnMut(&str) -> Result<bool>) -> Result<String> {
    if !taken(wanted)? {
        return Ok(wanted.to_owned());
    }
    if exact {
        return Err(StoreError::Conflict(format!(
            "a node named {wanted:?} already exists; choose another --name or remove it first"
        )));
    }
    let mut n = 2;
    while taken(&format!("{wanted}-{n}"))? {
        n += 1;
    }
    Ok(format!("{wanted}-{n}"))
}

/// A rename onto a name another node has.
pub fn node_name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!("a node named {name:?} already exists"))
}

pub fn no_node(id: &str) -> StoreError {
    StoreError::NotFound(format!("no node {id:?}"))
}

/// Whether a database at schema `version` can be served by this control plane, which
/// knows `known` migrations.
pub fn schema_known(version: usize, known: usize) -> Result<()> {
    if version > known {
        return Err(StoreError::Refused(format!(
            "the database has schema version {version}, newer than this control plane knows ({known}); upgrade openbox"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_admin_stays_and_others_may_go() {
        assert!(matches!(may_remove_user("a", None, 1), Err(StoreError::NotFound(_))));
        assert!(matches!(may_remove_user("a", Some(true), 1), Err(StoreError::Refused(m)) if m.contains("last admin")));
        assert!(may_remove_user("a", Some(true), 2).is_ok());
        assert!(may_remove_user("b", Some(false), 1).is_ok());
    }

    #[test]
    fn a_taken_node_name_gets_the_first_free_suffix_unless_it_was_asked_for() {
        let taken = ["box", "box-2"];
        let is_taken = |n: &str| Ok(taken.contains(&n));
        assert_eq!(node_name("new", false, is_taken).unwrap(), "new");
        assert_eq!(node_name("box", false, is_taken).unwrap(), "box-3");
        assert!(matches!(node_name("box", true, is_taken), Err(StoreError::Conflict(m)) if m.contains("--name")));
    }

    #[test]
    fn a_token_is_used_once_and_not_after_it_expires() {
        assert_eq!(token_state("[\"a\"]".into(), Some(10), false, 5), Ok(vec!["a".to_owned()]));
        assert_eq!(token_state("[]".into(), Some(10), false, 10), Err(EnrollTokenProblem::Expired));
        assert_eq!(token_state("[]".into(), None, true, 0), Err(EnrollTokenProblem::Used));
    }

    #[test]
    fn a_grant_narrows_when_its_kinds_change_not_when_it_is_new() {
        assert!(!grant_narrowed(None, "[]"));
        assert!(!grant_narrowed(Some("[\"native\"]"), "[\"native\"]"));
        assert!(grant_narrowed(Some("[]"), "[\"native\"]"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        assert!(schema_known(3, 3).is_ok());
        assert!(matches!(schema_known(4, 3), Err(StoreError::Refused(m)) if m.contains("upgrade openbox")));
    }
}
