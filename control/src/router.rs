//! The control plane's routes: which handler serves each of the API's endpoints (their
//! paths and methods are `proto::routes`', shared with the client), the dashboard's pages,
//! and the metrics. The one place that names the handlers.

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, any, delete, get, patch, post};
use proto::routes::{self, Method, Route};

use crate::App;
use crate::handlers::{account, audit, console, dispatch, enrollment, events, nodes, sessions, terminal, users};

/// `handler` at route `R`'s path, for its method.
fn on<R: Route, H: Handler<T, Arc<App>>, T: 'static>(router: Router<Arc<App>>, handler: H) -> Router<Arc<App>> {
    let method: MethodRouter<Arc<App>> = match R::METHOD {
        Method::Get => get(handler),
        Method::Post => post(handler),
        Method::Patch => patch(handler),
        Method::Delete => delete(handler),
    };
    router.route(R::PATH, method)
}

pub fn router(app: Arc<App>) -> Router {
    let api = Router::new();
    let api = on::<routes::Health, _, _>(api, || async {
        axum::Json(proto::api::Health { status: "ok".into(), version: proto::VERSION.into() })
    });
    let api = on::<routes::Ready, _, _>(api, crate::metrics::ready);
    let api = on::<routes::WhoAmI, _, _>(api, account::whoami);
    let api = on::<routes::Logout, _, _>(api, account::logout);
    let api = on::<routes::Mesh, _, _>(api, account::mesh);
    let api = on::<routes::ListUsers, _, _>(api, users::list);
    let api = on::<routes::AddUser, _, _>(api, users::add);
    let api = on::<routes::RemoveUser, _, _>(api, users::remove);
    let api = on::<routes::NewUserToken, _, _>(api, users::new_token);
    let api = on::<routes::Grant, _, _>(api, users::grant);
    let api = on::<routes::Revoke, _, _>(api, users::revoke);
    let api = on::<routes::ListEnrollTokens, _, _>(api, enrollment::list_tokens);
    let api = on::<routes::NewEnrollToken, _, _>(api, enrollment::new_token);
    let api = on::<routes::RemoveEnrollToken, _, _>(api, enrollment::remove_token);
    let api = on::<routes::Enroll, _, _>(api, enrollment::enroll);
    let api = on::<routes::EnrollMesh, _, _>(api, enrollment::fleet_mesh);
    let api = on::<routes::Heartbeat, _, _>(api, enrollment::heartbeat);
    let api = on::<routes::ListNodes, _, _>(api, nodes::list);
    let api = on::<routes::RemoveNode, _, _>(api, nodes::remove);
    let api = on::<routes::UpdateNode, _, _>(api, nodes::update);
    let api = on::<routes::Dispatch, _, _>(api, dispatch::dispatch);
    let api = on::<routes::Events, _, _>(api, events::events);
    let api = on::<routes::ListSessions, _, _>(api, sessions::list);
    let api = on::<routes::RemoveSession, _, _>(api, sessions::remove);
    let api = on::<routes::Audit, _, _>(api, audit::log);
    let api = on::<routes::NewWebLink, _, _>(api, crate::web::new_link);
    let api = on::<routes::Console, _, _>(api, console::run);
    let api = on::<routes::ConsoleTerminal, _, _>(api, terminal::open);
    api.route("/metrics", get(crate::metrics::metrics))
        // The dashboard: its page and assets, and browser sessions.
        .route("/", get(crate::web::index))
        .route("/assets/{file}", get(crate::web::asset))
        .route("/web/login", post(crate::web::login))
        .route("/web/link/{code}", get(crate::web::follow_link))
        .route("/web/link", post(crate::web::use_link))
        .route("/web/session", get(crate::web::session))
        .route("/web/logout", post(crate::web::logout))
        // MCP's Streamable HTTP: POST, GET (a stream) and DELETE (a session's end).
        .route("/mcp", any(crate::mcp::serve))
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::metrics::count))
        .with_state(app)
}

/// The API driven request by request through the router, with no listener: who may do
/// what, what comes back, and how a refusal reads — each route as the client calls it.
#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use proto::routes::{Route, fill, query};
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;

    struct Api {
        router: Router,
        admin: String,
        _dir: tempfile::TempDir,
    }

    impl Api {
        async fn new() -> Api {
            let (app, admin, dir) = crate::testing::app().await;
            Api { router: router(app), admin, _dir: dir }
        }

        /// Calls route `R` as `token`'s user: the status and the JSON answer.
        async fn call<R: Route>(
            &self,
            token: Option<&str>,
            params: &[&str],
            request: &R::Request,
        ) -> (StatusCode, Value) {
            let path = fill::<R>(params);
            let (method, uri, body) = match R::METHOD {
                Method::Get => ("GET", format!("{path}{}", query(request)), Body::empty()),
                Method::Post => ("POST", path, Body::from(serde_json::to_vec(request).unwrap())),
                Method::Patch => ("PATCH", path, Body::from(serde_json::to_vec(request).unwrap())),
                Method::Delete => ("DELETE", path, Body::empty()),
            };
            let mut req = Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, "application/json");
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
    }

    #[tokio::test]
    async fn the_admin_adds_a_user_who_sees_nothing_and_may_change_nothing_until_granted() {
        let api = Api::new().await;
        let admin = Some(api.admin.as_str());
        let (status, me) = api.call::<routes::WhoAmI>(admin, &[], &()).await;
        assert_eq!((status, &me["user"], &me["admin"]), (StatusCode::OK, &"admin".into(), &true.into()));

        let new = proto::api::NewUser { name: "bob".into() };
        let (status, bob) = api.call::<routes::AddUser>(admin, &[], &new).await;
        assert_eq!(status, StatusCode::OK, "{bob}");
        let bob = bob["token"].as_str().unwrap().to_owned();
        let (status, again) = api.call::<routes::AddUser>(admin, &[], &new).await;
        assert_eq!(status, StatusCode::CONFLICT, "{again}");
        assert!(again["error"].as_str().unwrap().contains("already exists"), "{again}");

        // Bob: no nodes to see, and no admin's work to do.
        let (status, nodes) = api.call::<routes::ListNodes>(Some(&bob), &[], &Default::default()).await;
        assert_eq!((status, nodes), (StatusCode::OK, Value::Array(Vec::new())));
        let (status, refused) = api.call::<routes::ListUsers>(Some(&bob), &[], &()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
        assert!(refused["error"].as_str().unwrap().contains("not an admin"), "{refused}");

        // A grant, by route, and its taking back.
        let grant = proto::api::Grant { on: proto::api::Target::Tag("ci".into()), isolation: vec![] };
        let (status, grants) = api.call::<routes::Grant>(admin, &["bob"], &grant).await;
        assert_eq!((status, grants.as_array().unwrap().len()), (StatusCode::OK, 1));
        let (status, grants) = api.call::<routes::Revoke>(admin, &["bob", "tag", "ci"], &()).await;
        assert_eq!((status, grants), (StatusCode::OK, Value::Array(Vec::new())));
        let (status, _) = api.call::<routes::RemoveUser>(admin, &["bob"], &()).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, gone) = api.call::<routes::WhoAmI>(Some(&bob), &[], &()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a removed user's token is dead: {gone}");
    }

    #[tokio::test]
    async fn a_request_without_a_token_or_with_a_bad_body_is_refused_in_json() {
        let api = Api::new().await;
        let (status, refused) = api.call::<routes::ListNodes>(None, &[], &Default::default()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(refused["error"].as_str().unwrap().contains("openbox login"), "{refused}");

        let req = Request::builder()
            .method("POST")
            .uri(routes::Dispatch::PATH)
            .header(header::AUTHORIZATION, format!("Bearer {}", api.admin))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"target\": 7}"))
            .unwrap();
        let resp = api.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body["error"].as_str().unwrap().starts_with("bad request body"), "{body}");
    }

    #[tokio::test]
    async fn dispatch_to_a_tag_nobody_carries_says_so_and_the_audit_log_holds_the_changes() {
        let api = Api::new().await;
        let admin = Some(api.admin.as_str());
        let key = trust::generate_key().public_key().to_openssh().unwrap();
        let want = proto::api::DispatchRequest {
            target: proto::api::Target::Tag("gpu".into()),
            session: None,
            isolation: proto::Isolation::Native,
            public_key: key,
        };
        let (status, refused) = api.call::<routes::Dispatch>(admin, &[], &want).await;
        assert!(status.is_client_error(), "{status} {refused}");
        assert!(refused["error"].as_str().unwrap().contains("gpu"), "{refused}");

        api.call::<routes::AddUser>(admin, &[], &proto::api::NewUser { name: "eve".into() }).await;
        let filter = proto::api::AuditFilter { user: Some("admin".into()), ..Default::default() };
        let (status, log) = api.call::<routes::Audit>(admin, &[], &filter).await;
        assert_eq!(status, StatusCode::OK);
        let actions: Vec<&str> = log.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        assert!(actions.contains(&"user.add"), "{log}");
    }

    #[tokio::test]
    async fn every_route_of_the_api_reaches_a_handler() {
        let api = Api::new().await;
        for (method, path) in routes::ALL {
            let path = path.split('/').map(|p| if p.starts_with('{') { "x" } else { p }).collect::<Vec<_>>().join("/");
            let method = format!("{method:?}").to_uppercase();
            let req = Request::builder().method(method.as_str()).uri(&path).body(Body::empty()).unwrap();
            let resp = api.router.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            // The router's own "no such route" has no body; a handler's refusal says why.
            let routed =
                status != StatusCode::METHOD_NOT_ALLOWED && (status != StatusCode::NOT_FOUND || !bytes.is_empty());
            assert!(routed, "{method} {path}: {status}, no handler");
        }
    }
}
