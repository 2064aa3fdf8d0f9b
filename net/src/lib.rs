//! The network seam shared by openboxd, the agent and (later) the control plane's web
//! console: a small JSON client for the control plane's HTTP API, and the SSH client that
//! reaches agents, checking each node's host certificate before anything is sent.
//!
//! The transport is plain TCP today; the tailnet plugs in behind [`ssh::dial`].

pub mod control;
pub mod ssh;
