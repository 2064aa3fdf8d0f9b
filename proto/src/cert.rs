//! Names of the extensions openbox binds into user certificates. The agent refuses a
//! certificate whose openbox extensions are missing or malformed.

/// The node id the certificate was issued for; the agent refuses it elsewhere.
pub const EXT_NODE: &str = "node@openbox";
/// The isolation the command must run under (`native`, `docker:IMG`, `nspawn:DIR`).
pub const EXT_ISOLATION: &str = "isolation@openbox";
/// The persistent session the command belongs to, when there is one.
pub const EXT_SESSION: &str = "session@openbox";
/// The user's incarnation: a name removed and added again is another user, whose
/// certificates and sessions are not the removed one's.
pub const EXT_USER: &str = "user@openbox";
/// Present (empty) when the user is an admin of the fleet. Without it the agent confines
/// what the command may reach beyond its isolation: no host mounts but those the agent
/// allows, a private user namespace in nspawn, a hardened Docker container. Absent means
/// confined, so a certificate from an older control plane gets the stricter treatment.
pub const EXT_ADMIN: &str = "admin@openbox";

/// Standard OpenSSH extensions a user certificate may carry; all others must be ours.
pub const STANDARD_EXTENSIONS: &[&str] = &[
    "permit-pty",
    "permit-user-rc",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-X11-forwarding",
    "no-touch-required",
];

/// OpenSSH's extension that lets a certificate forward ports (`-L`, `-R`).
pub const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// How far back a user certificate's validity starts, to absorb small clock differences.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// Lifetime of a node's host certificate; renewed over the heartbeat well before expiry.
pub const HOST_CERT_TTL_SECS: u64 = 7 * 24 * 3600;
