//! The control plane's routes: which handler serves each of the API's endpoints (their
//! paths and methods are `proto::routes`', shared with the client), the dashboard's pages,
//! and the metrics. The one place that names the handlers.

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, delete, get, patch, post};
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
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::metrics::count))
        .with_state(app)
}
