//! The network seam shared by openboxd, the agent and (later) the control plane's web
//! console: a small JSON client for the control plane's HTTP API, and the SSH client that
//! reaches agents, checking each node's host certificate before anything is sent.
//!
//! Every connection to a node is dialled through [`transport::Transport`]: plain TCP
//! today; the tailnet becomes one more variant there.

pub mod control;
pub mod halt;
pub mod remote;
pub mod ssh;
pub mod transport;
