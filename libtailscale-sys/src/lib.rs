//! Raw bindings to Tailscale's `libtailscale`, which embeds a tailnet node in a process.
//!
//! Without the `mesh` feature this crate is empty and nothing is linked: the default
//! transport is plain TCP. The bindings and their build (a Go c-archive) land with the mesh
//! transport.
