//! The control plane's API, one type per endpoint: its method, its path, and what goes in
//! and comes out. The control plane's router mounts each handler at its route's path and
//! method, and `net::control::Client::call` sends each request by its route, so the two
//! ends cannot drift apart: a path, a method or a body type exists in one place only.
//!
//! A path names its parameters in braces (`/v1/users/{name}`), as the router writes them;
//! the client fills them in order ([`fill`]). A GET's request is its query string; a POST's
//! or PATCH's is its JSON body; a DELETE has none (`()`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api;

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

/// One endpoint of the control plane's API.
pub trait Route {
    const METHOD: Method;
    /// The path, with `{name}` for each parameter.
    const PATH: &'static str;
    /// The query (GET) or JSON body (POST, PATCH); `()` for none.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The JSON answer; `()` for none (204). For a stream, the type of each item.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! routes {
    ($( $(#[$doc:meta])* $name:ident: $method:ident $path:literal, $req:ty => $resp:ty; )*) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Route for $name {
                const METHOD: Method = Method::$method;
                const PATH: &'static str = $path;
                type Request = $req;
                type Response = $resp;
            }
        )*
        /// Every route, as (method, path): for tests that walk the API.
        pub const ALL: &[(Method, &str)] = &[$((Method::$method, $path)),*];
    };
}

routes! {
    /// Whether the control plane answers, and its version.
    Health: Get "/v1/health", () => api::Health;
    /// Whether it can serve (its database answers): 503 when not.
    Ready: Get "/v1/ready", () => api::Readiness;
    /// Who the caller is.
    WhoAmI: Get "/v1/whoami", () => api::WhoAmI;
    /// Revokes the caller's login token (or ends the browser's session).
    Logout: Post "/v1/logout", () => ();
    ListUsers: Get "/v1/users", () => Vec<api::UserInfo>;
    AddUser: Post "/v1/users", api::NewUser => api::UserCreated;
    RemoveUser: Delete "/v1/users/{name}", () => ();
    /// A new login token for a user.
    NewUserToken: Post "/v1/users/{name}/tokens", () => api::UserCreated;
    /// Lets a user run on a tag's nodes or one node; the user's grants.
    Grant: Post "/v1/users/{name}/grants", api::Grant => Vec<api::Grant>;
    /// Takes back a grant (`kind` is `tag` or `node`); the user's grants.
    Revoke: Delete "/v1/users/{name}/grants/{kind}/{value}", () => Vec<api::Grant>;
    ListEnrollTokens: Get "/v1/enroll-tokens", () => Vec<api::EnrollTokenInfo>;
    NewEnrollToken: Post "/v1/enroll-tokens", api::NewEnrollToken => api::EnrollToken;
    RemoveEnrollToken: Delete "/v1/enroll-tokens/{id}", () => ();
    /// A one-time link that opens the dashboard logged in.
    NewWebLink: Post "/v1/web-links", () => api::WebLink;
    /// A command run for the dashboard; the answer is a stream of events, one per line.
    Console: Post "/v1/console", api::ConsoleRequest => api::ConsoleEvent;
    /// A terminal for the dashboard: a WebSocket.
    ConsoleTerminal: Get "/v1/console/terminal", api::TerminalQuery => ();
    /// The fleet's tailnet, for a user's openboxd.
    Mesh: Get "/v1/mesh", api::MeshQuery => Option<api::MeshSettings>;
    Enroll: Post "/v1/enroll", api::EnrollRequest => api::Enrolled;
    /// The fleet's tailnet, asked with an enrollment token before enrolling.
    EnrollMesh: Post "/v1/enroll/mesh", api::EnrollMeshRequest => Option<api::MeshSettings>;
    Heartbeat: Post "/v1/heartbeat", api::Heartbeat => api::HeartbeatReply;
    ListNodes: Get "/v1/nodes", api::NodeFilter => Vec<api::Node>;
    RemoveNode: Delete "/v1/nodes/{node}", () => ();
    UpdateNode: Patch "/v1/nodes/{node}", api::NodeUpdate => api::Node;
    /// Picks a node and signs a user certificate for it.
    Dispatch: Post "/v1/dispatch", api::DispatchRequest => api::Dispatch;
    /// Server-sent events: the fleet and the caller's sessions as they change.
    Events: Get "/v1/events", api::EventsQuery => ();
    ListSessions: Get "/v1/sessions", () => Vec<api::SessionInfo>;
    RemoveSession: Delete "/v1/sessions/{id}", () => ();
    Audit: Get "/v1/audit", api::AuditFilter => Vec<api::AuditEntry>;
}

/// `R`'s path with its parameters filled in, in order, each percent-encoded; panics when
/// their number is not the path's (a programming error, caught by the tests).
pub fn fill<R: Route>(params: &[&str]) -> String {
    let mut path = String::new();
    let mut rest = R::PATH;
    let mut given = params.iter();
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("a closed parameter") + open;
        let value = given.next().unwrap_or_else(|| panic!("{} needs more parameters than {params:?}", R::PATH));
        path.push_str(&percent_encode(value));
        rest = &rest[close + 1..];
    }
    assert!(given.next().is_none(), "{} takes fewer parameters than {params:?}", R::PATH);
    path.push_str(rest);
    path
}

/// `request` as a query string (`?a=1&b=x`, or nothing): its fields that are set, each
/// percent-encoded. Queries are flat: strings, numbers and booleans.
pub fn query<T: Serialize>(request: &T) -> String {
    let value = serde_json::to_value(request).unwrap_or_default();
    let pairs: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some(format!("{}={}", percent_encode(k), percent_encode(&text)))
        })
        .collect();
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

/// Everything but unreserved characters (RFC 3986) as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_in_order_and_encoded() {
        assert_eq!(fill::<RemoveUser>(&["bob"]), "/v1/users/bob");
        assert_eq!(fill::<Revoke>(&["bob", "tag", "a b/c"]), "/v1/users/bob/grants/tag/a%20b%2Fc");
        assert_eq!(fill::<ListNodes>(&[]), "/v1/nodes");
    }

    #[test]
    #[should_panic(expected = "needs more parameters")]
    fn a_missing_parameter_is_caught() {
        fill::<Revoke>(&["bob"]);
    }

    #[test]
    fn queries_hold_the_fields_that_are_set() {
        let f = api::AuditFilter { user: Some("a&b".into()), node: None, since: Some(60), limit: None };
        assert_eq!(query(&f), "?since=60&user=a%26b");
        assert_eq!(query(&api::NodeFilter::default()), "");
    }

    #[test]
    fn no_two_routes_share_a_method_and_a_path() {
        let mut seen = std::collections::HashSet::new();
        for (method, path) in ALL {
            assert!(seen.insert((format!("{method:?}"), *path)), "{method:?} {path} twice");
            assert!(path.starts_with("/v1/"), "{path}");
        }
    }
}
