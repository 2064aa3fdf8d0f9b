//! The front door of every request to the API: who calls (a login token as a bearer, or
//! the dashboard's cookie with its session secret), whether a browser's request comes from
//! this site, what the request sent (a route's body or query, typed), and how a refusal is
//! answered. Handlers use it; it uses none of them.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, RequestPartsExt as _};
use proto::api::ApiError;
use proto::routes::Route;
use trust::token;

use crate::audit::{Record, Source};
use crate::refusal::{Kind, Refusal};
use crate::store::User;
use crate::{App, now};

/// The cookie that holds a browser session (with the `__Host-` prefix over HTTPS, which
/// makes browsers refuse it unless Secure, for this host only, on every path).
pub const COOKIE: &str = "openbox_session";
pub const HOST_COOKIE: &str = "__Host-openbox_session";
/// The header that carries the session secret.
pub const SECRET_HEADER: &str = "x-openbox-session";

/// The cookie's name here: `__Host-…` over HTTPS.
pub fn cookie_name(app: &App) -> &'static str {
    if app.config.public_url.starts_with("https://") { HOST_COOKIE } else { COOKIE }
}

/// A refusal as an HTTP answer: a status for its kind and an [`ApiError`] body.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Gone => StatusCode::GONE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ApiError { error: self.message })).into_response()
    }
}

/// What a handler of route `R` answers: its response, or a refusal.
pub type Reply<R> = Result<Json<<R as Route>::Response>, Refusal>;

/// The JSON body of route `R`'s request; a malformed one is answered with a JSON error.
pub struct Body<R: Route>(pub R::Request);

impl<R: Route, S: Send + Sync> FromRequest<S> for Body<R> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Body<R>, Refusal> {
        let Posted(v) = Posted::<R::Request>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// A JSON body of any type (the dashboard's own requests, outside the API's routes); a
/// malformed one is answered with a JSON error.
pub struct Posted<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Posted<T>, Refusal> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Posted(v)),
            Err(e) => Err(Refusal::new(Kind::BadRequest, format!("bad request body: {}", e.body_text()))),
        }
    }
}

/// The query of route `R`'s request.
pub struct Params<R: Route>(pub R::Request);

impl<R: Route, S: Send + Sync> FromRequestParts<S> for Params<R> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Params<R>, Refusal> {
        match parts.extract::<axum::extract::Query<R::Request>>().await {
            Ok(axum::extract::Query(v)) => Ok(Params(v)),
            Err(e) => Err(Refusal::new(Kind::BadRequest, format!("bad query: {}", e.body_text()))),
        }
    }
}

/// A login token sent as a bearer, if one was.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// A person authenticated by a login token, or by the dashboard's session cookie.
pub struct Caller {
    pub user: User,
    pub credential: Credential,
    /// Where the request came from.
    pub source: Option<Source>,
    /// What the caller acts through, when the control plane knows it from the credential
    /// itself: `mcp` for the MCP server it runs for the user (see `crate::mcp`).
    pub via: Option<&'static str>,
}

/// What a caller proved who they are with (each as its hash).
#[derive(Clone)]
pub enum Credential {
    Token(String),
    Web(String),
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, Refusal> {
        Caller::from_parts(parts, app).await
    }
}

impl Caller {
    pub async fn from_parts(parts: &Parts, app: &App) -> Result<Caller, Refusal> {
        let unauthorized = |m: &str| Refusal::new(Kind::Unauthorized, m);
        let source = parts.extensions.get::<Source>().cloned();
        let Some(tok) = bearer(&parts.headers) else {
            return match cookie(app, &parts.headers) {
                Some(cookie) => {
                    let (user, hash) = cookie_user(app, parts, cookie).await?;
                    Ok(Caller { user, credential: Credential::Web(hash), source, via: None })
                }
                None => Err(unauthorized("not logged in: run `openbox login --server URL`")),
            };
        };
        if !tok.starts_with(token::LOGIN_PREFIX) {
            return Err(unauthorized("that is not a login token (login tokens start with obx_)"));
        }
        let token_hash = token::hash(tok);
        let via = tok.starts_with(token::MCP_LOGIN_PREFIX).then_some("mcp");
        match app.store.user_by_login_token(&token_hash).await? {
            Some(user) => Ok(Caller { user, credential: Credential::Token(token_hash), source, via }),
            None => Err(unauthorized(
                "the login token is invalid or was revoked; ask an admin for a new one (`openbox user token NAME`)",
            )),
        }
    }

    /// Who this caller's credential belongs to now (`None`: revoked, expired or removed).
    pub async fn current_user(app: &App, credential: &Credential) -> Option<User> {
        match credential {
            Credential::Token(hash) => app.store.user_by_login_token(hash).await.ok()?,
            Credential::Web(hash) => app.store.web_session(hash, now()).await.ok()?.map(|s| s.user),
        }
    }

    /// Records an action by this caller in the audit log.
    pub async fn audit(&self, app: &App, action: &str, mut record: Record<'_>) -> Result<(), Refusal> {
        if let Some(via) = self.via {
            record.detail = Some(match record.detail {
                Some(detail) => format!("{detail} ({via})"),
                None => via.to_owned(),
            });
        }
        app.audit(&self.user.name, action, self.source.as_ref(), record).await
    }

    pub fn require_admin(&self) -> Result<(), Refusal> {
        if self.user.admin {
            Ok(())
        } else {
            Err(Refusal::new(Kind::Forbidden, format!("{:?} is not an admin; ask an admin to do this", self.user.name)))
        }
    }
}

/// The session cookie's value, if the request has one (by the name it has here).
pub fn cookie<'h>(app: &App, headers: &'h HeaderMap) -> Option<&'h str> {
    let name = cookie_name(app);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// The user of a request authenticated by its session cookie, which must come with the
/// session's secret (`X-Openbox-Session`; a WebSocket, which cannot send headers, puts it
/// in its query as `secret`); a state-changing request must also, when it says where it
/// comes from, come from here.
pub async fn cookie_user(app: &App, parts: &Parts, cookie: &str) -> Result<(User, String), Refusal> {
    let hash = token::hash(cookie);
    let Some(crate::store::WebSession { user, secret_hash, .. }) = app.store.web_session(&hash, now()).await? else {
        return Err(Refusal::new(Kind::Unauthorized, "your dashboard session has ended; log in again"));
    };
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        same_origin(&parts.headers)?;
    }
    let sent = match parts.headers.get(SECRET_HEADER) {
        Some(v) => v.to_str().ok().map(str::to_owned),
        None if is_websocket(&parts.headers) => query_value(parts.uri.query().unwrap_or_default(), "secret"),
        None => None,
    };
    if !sent.is_some_and(|s| token::same(&token::hash(&s), &secret_hash)) {
        return Err(Refusal::new(
            Kind::Unauthorized,
            "this request has the dashboard's cookie but not its session secret; log in to the dashboard again",
        ));
    }
    Ok((user, hash))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// One value of a query string (percent-decoding is not needed: the values asked for
/// here are hex).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned)
}

/// A WebSocket from the dashboard: it must say it comes from this site (its credentials
/// were checked with the caller's).
pub fn check_socket(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.get(header::ORIGIN).is_none() {
        return Err(Refusal::new(Kind::Forbidden, "a terminal must be opened from the dashboard"));
    }
    same_origin(headers)
}

/// Refuses a request whose `Origin` names another site than the one it was sent to.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h).unwrap_or_default();
    if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Err(Refusal::new(Kind::Forbidden, "a request from another site is refused"));
    }
    Ok(())
}
