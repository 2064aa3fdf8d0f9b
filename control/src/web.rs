//! The dashboard's side of the control plane: its pages (embedded from `web/` at build
//! time, so the binary serves them with no files beside it), and browser sessions.
//!
//! A browser logs in with a login token (or a one-time link from `openbox dashboard`) and
//! gets two things: a session cookie — HttpOnly, SameSite=Strict, expiring; `Secure` and
//! named with the `__Host-` prefix over HTTPS — and a session secret, in the login's answer
//! alone, which the page keeps (in its origin's storage, which another port's page cannot
//! read) and sends in `X-Openbox-Session` with every request. The cookie alone reads and
//! changes nothing: browsers send a cookie for 127.0.0.1 to every port, so any local
//! listener the browser visits sees it, and nothing hands the secret out in exchange for
//! it. A state-changing request must also come from this origin when the browser says
//! where it comes from. A bearer token needs neither, as browsers never send one on their
//! own. A one-time link logs in from the page, which asks before it replaces another
//! user's session.

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use trust::token;

use crate::audit::{Record, Source};
use crate::auth::{Caller, Credential, HOST_COOKIE, Posted, Reply, cookie, cookie_name, cookie_user, same_origin};
use crate::refusal::{Kind, Refusal};
use crate::store::User;
use crate::{App, now};
use proto::routes;

/// How long a browser session lasts.
const SESSION_SECS: u64 = 12 * 3600;
/// How long a link from `openbox dashboard` can be followed.
const LINK_SECS: u64 = 120;
const SESSION_PREFIX: &str = "web_";
const LINK_PREFIX: &str = "link_";

/// The pages, as built into the binary: path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../../web/app.js")),
    ("api.js", JS, include_bytes!("../../web/api.js")),
    ("dom.js", JS, include_bytes!("../../web/dom.js")),
    ("fleet.js", JS, include_bytes!("../../web/fleet.js")),
    ("pages.js", JS, include_bytes!("../../web/pages.js")),
    ("console.js", JS, include_bytes!("../../web/console.js")),
    // xterm.js (MIT, web/vendor/xterm/LICENSE), loaded only when a terminal is opened.
    ("xterm.mjs", JS, include_bytes!("../../web/vendor/xterm/xterm.mjs")),
    ("xterm.css", "text/css; charset=utf-8", include_bytes!("../../web/vendor/xterm/xterm.css")),
    ("addon-fit.mjs", JS, include_bytes!("../../web/vendor/xterm/addon-fit.mjs")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../web/style.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../web/favicon.svg")),
];
const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &[u8] = include_bytes!("../../web/index.html");

/// What a page may load and talk to: this origin only, no inline script, never framed.
/// Inline styles are allowed because the terminal (xterm.js) sizes and colours its cells
/// with `<style>` elements and style attributes it writes itself; pages build every
/// element from text (never from markup), so no one else's style can get in.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers every page and asset carries.
fn page(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Asked again each time, answered "not modified" by the tag: a new control plane then
    // never serves stale pages, and an unchanged one sends no bytes.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub async fn index(headers: HeaderMap) -> Response {
    static PAGE: LazyLock<Asset> = LazyLock::new(|| Asset::new(INDEX));
    PAGE.respond("text/html; charset=utf-8", &headers)
}

pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    static PREPARED: LazyLock<Vec<Asset>> =
        LazyLock::new(|| ASSETS.iter().map(|(_, _, body)| Asset::new(body)).collect());
    match ASSETS.iter().position(|(name, _, _)| *name == file) {
        Some(i) => PREPARED[i].respond(ASSETS[i].1, &headers),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// A file as served: as is and gzipped (made once, at first request), with a tag naming
/// its content.
struct Asset {
    plain: &'static [u8],
    gzipped: Bytes,
    etag: HeaderValue,
}

impl Asset {
    fn new(plain: &'static [u8]) -> Asset {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(plain).and_then(|()| gz.flush()).expect("writing to memory");
        let gzipped = gz.finish().expect("writing to memory");
        let digest = sha2::Sha256::digest(plain);
        let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{tag}\"")).expect("hex is a header value");
        Asset { plain, gzipped: gzipped.into(), etag }
    }

    fn respond(&self, content_type: &'static str, headers: &HeaderMap) -> Response {
        let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|tags| {
            tags.to_str().is_ok_and(|t| t.split(',').any(|t| t.trim().trim_start_matches("W/") == self.etag))
        });
        let gzip = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip")));
        let mut resp = if fresh {
            page(content_type, StatusCode::NOT_MODIFIED)
        } else if gzip {
            let mut resp = page(content_type, self.gzipped.clone());
            resp.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            resp
        } else {
            page(content_type, self.plain)
        };
        resp.headers_mut().insert(header::ETAG, self.etag.clone());
        resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        resp
    }
}

/// Who the browser is logged in as, and what its pages need to know.
#[derive(Serialize)]
struct SessionInfo {
    user: String,
    admin: bool,
    /// The session secret, sent in `X-Openbox-Session` with every request: only in the
    /// answer to a login, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// How nodes and users reach this control plane, for the commands the pages show.
    server: String,
    fingerprint: Option<String>,
    expires_at: u64,
}

#[derive(Deserialize)]
pub struct LoginRequest {
    token: String,
}

/// Exchanges a login token for a browser session.
pub async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    source: Option<axum::Extension<Source>>,
    Posted(b): Posted<LoginRequest>,
) -> Result<Response, Refusal> {
    same_origin(&headers)?;
    let req = b;
    let tok = req.token.trim();
    let user = match tok.starts_with(token::LOGIN_PREFIX) {
        true => app.store.user_by_login_token(&token::hash(tok)).await?,
        false => None,
    };
    let Some(user) = user else {
        return Err(Refusal::new(
            Kind::Unauthorized,
            "that login token is not valid: paste one that starts with obx_, or run `openbox dashboard` for a link",
        ));
    };
    start_session(&app, &user, source.map(|s| s.0).as_ref(), "web.login").await
}

/// Follows a one-time link: to the page, which uses it (`POST /web/link`) — at once, or
/// after asking, when it holds another user's session. The link is not used up here: a
/// page elsewhere that sends the browser to it logs no one in by that alone.
pub async fn follow_link(Path(code): Path<String>) -> Response {
    let to = match code.starts_with(LINK_PREFIX) && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        true => format!("/#link={code}"),
        false => "/#link-expired".to_owned(),
    };
    let mut resp = axum::response::Redirect::to(&to).into_response();
    resp.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
pub struct LinkRequest {
    code: String,
}

/// Uses a one-time link from this site's own page: a session for the link's user.
pub async fn use_link(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    source: Option<axum::Extension<Source>>,
    Posted(b): Posted<LinkRequest>,
) -> Result<Response, Refusal> {
    same_origin(&headers)?;
    let req = b;
    let user = match req.code.starts_with(LINK_PREFIX) {
        true => app.store.take_web_link(&token::hash(&req.code), now()).await?,
        false => None,
    };
    let Some(user) = user else {
        return Err(Refusal::new(
            Kind::Unauthorized,
            "that link was used already or has expired; run `openbox dashboard` again, or paste a login token",
        ));
    };
    start_session(&app, &user, source.map(|s| s.0).as_ref(), "web.login").await
}

async fn start_session(app: &App, user: &User, source: Option<&Source>, action: &str) -> Result<Response, Refusal> {
    let cookie = token::generate(SESSION_PREFIX);
    let secret = token::random_id();
    let t = now();
    // Only the secret's hash is kept, as for the cookie.
    let stored = token::hash(&secret);
    app.store.add_web_session(&token::hash(cookie.expose()), user.id, &stored, t, t + SESSION_SECS).await?;
    app.audit(&user.name, action, source, Record::default()).await?;
    let info = session_info(app, user, Some(secret), t + SESSION_SECS);
    let mut resp = Json(info).into_response();
    let secure = if cookie_name(app) == HOST_COOKIE { "; Secure" } else { "" };
    let set = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}",
        cookie_name(app),
        cookie.expose()
    );
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&set).map_err(Refusal::internal)?);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn session_info(app: &App, user: &User, secret: Option<String>, expires_at: u64) -> SessionInfo {
    SessionInfo {
        user: user.name.clone(),
        admin: user.admin,
        secret,
        server: app.config.public_url.clone(),
        fingerprint: app.config.fingerprint.clone(),
        expires_at,
    }
}

/// The browser's session, if it has a live one and the page holds its secret (401
/// otherwise, which the pages take as "show the login form"). The secret is not in it.
pub async fn session(State(app): State<Arc<App>>, parts: Parts) -> Result<Response, Refusal> {
    let Some(cookie) = cookie(&app, &parts.headers) else {
        return Err(Refusal::new(Kind::Unauthorized, "not logged in"));
    };
    let (user, hash) = cookie_user(&app, &parts, cookie).await?;
    let expires_at = app.store.web_session(&hash, now()).await?.map(|s| s.expires_at).unwrap_or_default();
    let mut resp = Json(session_info(&app, &user, None, expires_at)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Ends the browser's session and clears its cookie.
pub async fn logout(State(app): State<Arc<App>>, parts: Parts) -> Result<Response, Refusal> {
    let caller = Caller::from_parts(&parts, &app).await?;
    if let Credential::Web(hash) = &caller.credential {
        app.store.remove_web_session(hash).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let secure = if cookie_name(&app) == HOST_COOKIE { "; Secure" } else { "" };
    let clear = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}", cookie_name(&app));
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).map_err(Refusal::internal)?);
    Ok(resp)
}

/// A one-time link that opens the dashboard logged in as the caller (`openbox dashboard`).
pub async fn new_link(State(app): State<Arc<App>>, caller: Caller) -> Reply<routes::NewWebLink> {
    let code = token::generate(LINK_PREFIX);
    let t = now();
    app.store.add_web_link(&token::hash(code.expose()), caller.user.id, t, t + LINK_SECS).await?;
    let url = format!("{}/web/link/{}", app.config.public_url, code.expose());
    Ok(Json(proto::api::WebLink { url, expires_at: t + LINK_SECS }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_web_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../web");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let served = name == "index.html" || ASSETS.iter().any(|(file, _, _)| *file == name);
            let tooling = name.starts_with('.') || name == "README.md" || name == "tests" || name == "vendor";
            assert!(served || tooling, "web/{name} is not in ASSETS");
        }
        for entry in std::fs::read_dir(format!("{dir}/vendor/xterm")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let served = ASSETS.iter().any(|(file, _, _)| *file == name);
            assert!(served || name == "LICENSE" || name == "README.md", "web/vendor/xterm/{name} is not in ASSETS");
        }
    }

    #[tokio::test]
    async fn assets_go_gzipped_to_browsers_that_take_it_and_unchanged_ones_are_not_sent_again() {
        use std::io::Read;
        let asset = Asset::new(include_bytes!("../../web/vendor/xterm/xterm.mjs"));
        let ask = |pairs: &[(header::HeaderName, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(name, HeaderValue::from_str(value).unwrap());
            }
            asset.respond(JS, &headers)
        };
        let body = |resp: Response| async { axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap() };

        let resp = ask(&[(header::ACCEPT_ENCODING, "br;q=1.0, gzip;q=0.8")]);
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
        let gzipped = body(resp).await;
        assert!(gzipped.len() < asset.plain.len() / 3, "{} of {}", gzipped.len(), asset.plain.len());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, asset.plain);

        let resp = ask(&[(header::ACCEPT_ENCODING, "identity")]);
        assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(body(resp).await, asset.plain);

        let resp = ask(&[(header::IF_NONE_MATCH, &etag), (header::ACCEPT_ENCODING, "gzip")]);
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert!(body(resp).await.is_empty());
        let resp = ask(&[(header::IF_NONE_MATCH, "\"0123\"")]);
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
