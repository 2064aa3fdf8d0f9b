//! Raw bindings to libtailscale's C API (`go/tailscale.h`): a tailnet node embedded in the
//! process. The functions have Tailscale's own names and semantics, so this crate would
//! bind upstream libtailscale unchanged; here they are implemented by `go/tailscale.go`
//! over `tailscale.com/tsnet` and linked as a c-archive built by `build.rs`.
//!
//! Without the `mesh` feature the crate is empty and nothing is linked. Everything here is
//! `unsafe` to call; `openbox-tailnet` is the safe wrapper, and the only other place
//! `unsafe` is allowed.
#![allow(unsafe_code)]

#[cfg(feature = "mesh")]
#[allow(non_camel_case_types)]
mod ffi {
    use std::os::raw::{c_char, c_int};

    /// A tailnet node handle.
    pub type tailscale = c_int;
    /// A connection: a file descriptor (one end of a socketpair bridged to the tailnet).
    pub type tailscale_conn = c_int;
    /// A listener: a file descriptor that is readable when a connection waits; each
    /// `tailscale_accept` receives one.
    pub type tailscale_listener = c_int;

    unsafe extern "C" {
        pub fn tailscale_new() -> tailscale;
        pub fn tailscale_start(sd: tailscale) -> c_int;
        pub fn tailscale_up(sd: tailscale) -> c_int;
        pub fn tailscale_close(sd: tailscale) -> c_int;

        pub fn tailscale_set_dir(sd: tailscale, dir: *const c_char) -> c_int;
        pub fn tailscale_set_hostname(sd: tailscale, hostname: *const c_char) -> c_int;
        pub fn tailscale_set_authkey(sd: tailscale, authkey: *const c_char) -> c_int;
        pub fn tailscale_set_control_url(sd: tailscale, control_url: *const c_char) -> c_int;
        pub fn tailscale_set_ephemeral(sd: tailscale, ephemeral: c_int) -> c_int;
        /// Takes ownership of `fd`; -1 discards the logs.
        pub fn tailscale_set_logfd(sd: tailscale, fd: c_int) -> c_int;

        pub fn tailscale_getips(sd: tailscale, buf: *mut c_char, buflen: usize) -> c_int;
        pub fn tailscale_dial(
            sd: tailscale,
            network: *const c_char,
            addr: *const c_char,
            conn_out: *mut tailscale_conn,
        ) -> c_int;
        pub fn tailscale_listen(
            sd: tailscale,
            network: *const c_char,
            addr: *const c_char,
            listener_out: *mut tailscale_listener,
        ) -> c_int;
        /// Returns 0 or an errno value.
        pub fn tailscale_accept(listener: tailscale_listener, conn_out: *mut tailscale_conn) -> c_int;
        /// Returns 0 or an errno value.
        pub fn tailscale_getremoteaddr(
            listener: tailscale_listener,
            conn: tailscale_conn,
            buf: *mut c_char,
            buflen: usize,
        ) -> c_int;
        pub fn tailscale_loopback(
            sd: tailscale,
            addr_out: *mut c_char,
            addrlen: usize,
            proxy_cred_out: *mut c_char,
            local_api_cred_out: *mut c_char,
        ) -> c_int;
        pub fn tailscale_errmsg(sd: tailscale, buf: *mut c_char, buflen: usize) -> c_int;
    }
}

#[cfg(feature = "mesh")]
pub use ffi::*;
