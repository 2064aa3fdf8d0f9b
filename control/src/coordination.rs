//! The fleet's tailnet keys, minted one at a time through the coordination server's API
//! (Headscale's REST API, with an API key from `headscale apikeys create`), so that no
//! laptop or node is handed the fleet's reusable key: each gets a key that works once,
//! expires within minutes, and tags the device it makes — `tag:openbox-user` and the
//! user's own tag for a laptop, `tag:openbox-node` for a node — so that a user's devices
//! can be found and deleted when the user is removed, as a node's device is with the node.
//!
//! Without an API key the control plane hands the reusable key to admins alone (and to
//! the agents an admin's enrollment token brings).

use net::control::{Client, ControlError, Endpoint};
use proto::api::MeshSettings;
use proto::routes::{Method, Route};
use serde::{Deserialize, Serialize};
use trust::Secret;

use crate::App;
use crate::refusal::{Kind, Refusal};
use crate::store::User;

/// How long a minted key can be used to join: the first join is all it is for.
const KEY_TTL_SECS: u64 = 10 * 60;
/// The tag of every laptop (openboxd) that joins with a minted key.
pub const USER_TAG: &str = "tag:openbox-user";
/// The tag of every node (agent) that joins with a minted key.
pub const NODE_TAG: &str = "tag:openbox-node";

/// The tag of one user's laptops: by the user's incarnation (lowercase hex), so a name
/// used again is another user, and tags stay within what Headscale takes.
pub fn user_tag(incarnation: &str) -> String {
    format!("tag:openbox-user-{}", incarnation.to_ascii_lowercase())
}

/// A client of the coordination server's API.
pub struct Coordination {
    client: Client,
}

#[derive(Debug, thiserror::Error)]
#[error("the tailnet's coordination server ({url}) did not {what}: {error}")]
pub struct CoordinationError {
    url: String,
    what: &'static str,
    error: ControlError,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewKey {
    /// No user: the device belongs to its tags.
    user: String,
    reusable: bool,
    ephemeral: bool,
    expiration: String,
    acl_tags: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyMinted {
    pre_auth_key: MintedKey,
}

#[derive(Serialize, Deserialize)]
struct MintedKey {
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Devices {
    #[serde(default)]
    nodes: Vec<Device>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    id: String,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Headscale's API, as far as the control plane uses it: one route each, as for openbox's own.
struct MintKey;
impl Route for MintKey {
    const METHOD: Method = Method::Post;
    const PATH: &'static str = "/api/v1/preauthkey";
    type Request = NewKey;
    type Response = KeyMinted;
}

struct ListDevices;
impl Route for ListDevices {
    const METHOD: Method = Method::Get;
    const PATH: &'static str = "/api/v1/node";
    type Request = ();
    type Response = Devices;
}

struct DeleteDevice;
impl Route for DeleteDevice {
    const METHOD: Method = Method::Delete;
    const PATH: &'static str = "/api/v1/node/{id}";
    type Request = ();
    type Response = serde_json::Value;
}

impl Coordination {
    pub fn new(control_url: &str, api_key: Secret) -> Result<Coordination, ControlError> {
        Ok(Coordination { client: Client::new(&Endpoint::new(control_url), Some(api_key))? })
    }

    fn fail(&self, what: &'static str) -> impl FnOnce(ControlError) -> CoordinationError + '_ {
        move |error| CoordinationError { url: self.client.url().to_owned(), what, error }
    }

    /// A key that joins one device, within minutes, with `tags`.
    pub async fn mint(&self, tags: Vec<String>) -> Result<Secret, CoordinationError> {
        let request = NewKey {
            user: "0".into(),
            reusable: false,
            ephemeral: false,
            expiration: rfc3339(proto::time::now() + KEY_TTL_SECS),
            acl_tags: tags,
        };
        let minted = self.client.call::<MintKey>(&[], &request).await.map_err(self.fail("mint a key"))?;
        Ok(Secret::new(minted.pre_auth_key.key))
    }

    /// Deletes the devices that carry `tag`; how many it deleted.
    pub async fn delete_tagged(&self, tag: &str) -> Result<usize, CoordinationError> {
        self.delete_where(|d| d.tags.iter().any(|t| t == tag)).await
    }

    /// Deletes the device with tailnet address `ip`; how many it deleted.
    pub async fn delete_at(&self, ip: std::net::IpAddr) -> Result<usize, CoordinationError> {
        let ip = ip.to_string();
        self.delete_where(|d| d.ip_addresses.contains(&ip)).await
    }

    async fn delete_where(&self, which: impl Fn(&Device) -> bool) -> Result<usize, CoordinationError> {
        let devices = self.client.call::<ListDevices>(&[], &()).await.map_err(self.fail("list its devices"))?;
        let mut deleted = 0;
        for d in devices.nodes.iter().filter(|d| which(d)) {
            self.client.call::<DeleteDevice>(&[&d.id], &()).await.map_err(self.fail("delete a device"))?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// The fleet's tailnet for `user`'s laptop: a key of its own when the control plane can
/// mint one, else the reusable key — to an admin only.
pub async fn for_user(app: &App, user: &User) -> Result<Option<MeshSettings>, Refusal> {
    let Some(fleet) = app.store.mesh().await? else { return Ok(None) };
    match &app.coordination {
        Some(c) => {
            let key = c.mint(vec![USER_TAG.to_owned(), user_tag(&user.incarnation)]).await.map_err(unavailable)?;
            tracing::info!(user = %user.name, "minted a one-time tailnet key");
            Ok(Some(MeshSettings { control_url: fleet.control_url, auth_key: key.expose().to_owned() }))
        }
        None if user.admin => Ok(Some(fleet)),
        None => Err(Refusal::new(
            Kind::Forbidden,
            format!(
                "the fleet's tailnet at {} hands its reusable key to admins only; an admin can have the control plane \
                 mint a one-time key for each laptop: `openbox control --mesh-api-key-file FILE` with a Headscale \
                 API key (`headscale apikeys create`)",
                fleet.control_url
            ),
        )),
    }
}

/// The fleet's tailnet for a node enrolling with an admin's token: a key of its own when
/// the control plane can mint one, else the reusable key.
pub async fn for_node(app: &App) -> Result<Option<MeshSettings>, Refusal> {
    let Some(fleet) = app.store.mesh().await? else { return Ok(None) };
    match &app.coordination {
        Some(c) => {
            let key = c.mint(vec![NODE_TAG.to_owned()]).await.map_err(unavailable)?;
            Ok(Some(MeshSettings { control_url: fleet.control_url, auth_key: key.expose().to_owned() }))
        }
        None => Ok(Some(fleet)),
    }
}

/// Deletes a removed user's laptops from the tailnet, in the background (the removal
/// itself has happened; a failure here is logged).
pub fn forget_user(app: &std::sync::Arc<App>, name: &str, incarnation: &str) {
    let Some(_) = &app.coordination else { return };
    let (app, name, tag) = (app.clone(), name.to_owned(), user_tag(incarnation));
    tokio::spawn(async move {
        let Some(c) = &app.coordination else { return };
        match c.delete_tagged(&tag).await {
            Ok(n) => tracing::info!(user = %name, devices = n, "deleted the removed user's devices from the tailnet"),
            Err(e) => {
                tracing::warn!(user = %name, error = %e, "could not delete the removed user's devices from the tailnet");
            }
        }
    });
}

/// Deletes a removed node's device (at its tailnet address) from the tailnet, in the
/// background.
pub fn forget_node(app: &std::sync::Arc<App>, node_id: &str, mesh_addr: Option<&str>) {
    let Some(_) = &app.coordination else { return };
    let Some(ip) = mesh_addr.and_then(|a| a.parse::<std::net::SocketAddr>().ok()).map(|a| a.ip()) else { return };
    let (app, node) = (app.clone(), node_id.to_owned());
    tokio::spawn(async move {
        let Some(c) = &app.coordination else { return };
        match c.delete_at(ip).await {
            Ok(n) => tracing::info!(%node, devices = n, "deleted the removed node's device from the tailnet"),
            Err(e) => {
                tracing::warn!(%node, error = %e, "could not delete the removed node's device from the tailnet");
            }
        }
    });
}

fn unavailable(e: CoordinationError) -> Refusal {
    tracing::warn!(error = %e, "no tailnet key");
    Refusal::new(Kind::Unavailable, format!("{e}; try again in a moment"))
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-06T18:06:31Z`).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc_3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_580_391), "2026-12-06T18:06:31Z");
    }

    #[test]
    fn a_users_tag_is_lowercase() {
        assert_eq!(user_tag("ABC123"), "tag:openbox-user-abc123");
    }
}
