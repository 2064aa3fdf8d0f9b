//! Raw bindings to libtailscale's C API (`go/tailscale.h`): a tailnet node embedded in the
//! process. The functions have Tailscale's own names and semantics, so this crate would
//! bind upstream libtailscale unchanged; here they are implemented by `go/tailscale.go`
//! over `tailscale.com/tsnet` and linked as a c-archive built by `build.rs`.
//!
//! On Linux, Go's runtime starts with the first [`tailscale_new`], not when the process
//! loads (`build.rs` takes the archive's constructor out of `.init_array`; [`go_runtime`]
//! calls it): a process that never joins a tailnet never runs Go or pages in its code.
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
        /// Called through [`super::tailscale_new`], which starts Go's runtime first.
        #[link_name = "tailscale_new"]
        pub(super) fn go_tailscale_new() -> tailscale;
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
pub use ffi::{
    tailscale, tailscale_accept, tailscale_close, tailscale_conn, tailscale_dial, tailscale_errmsg, tailscale_getips,
    tailscale_getremoteaddr, tailscale_listen, tailscale_listener, tailscale_loopback, tailscale_set_authkey,
    tailscale_set_control_url, tailscale_set_dir, tailscale_set_ephemeral, tailscale_set_hostname, tailscale_set_logfd,
    tailscale_start, tailscale_up,
};

/// Makes a node handle (every other call takes one), starting Go's runtime first if this
/// is the process's first call.
///
/// # Safety
/// As for every function of this crate: a plain C call into Go.
#[cfg(feature = "mesh")]
pub unsafe fn tailscale_new() -> tailscale {
    go_runtime::start();
    // SAFETY: Go's runtime is started (or starts itself, where the loader does it).
    unsafe { ffi::go_tailscale_new() }
}

/// Starting Go's runtime on first use (Linux). A c-archive's runtime starts from a
/// constructor the loader runs with the process's `argc`, `argv` and `envp` (Go finds the
/// environment and the auxiliary vector after `argv`); `build.rs` moved that constructor
/// into the section `openbox_rt0`, so this module keeps the three values the loader gives
/// its own constructor and calls Go's with them, once.
#[cfg(all(feature = "mesh", target_os = "linux"))]
mod go_runtime {
    use std::os::raw::{c_char, c_int};
    use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

    type Constructor = unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char);

    unsafe extern "C" {
        /// The one entry of the section `openbox_rt0`: Go's `_rt0_amd64_lib` (or arm64's).
        #[link_name = "__start_openbox_rt0"]
        static GO_CONSTRUCTOR: Constructor;
    }

    static ARGC: AtomicI32 = AtomicI32::new(0);
    static ARGV: AtomicPtr<*const c_char> = AtomicPtr::new(std::ptr::null_mut());
    static ENVP: AtomicPtr<*const c_char> = AtomicPtr::new(std::ptr::null_mut());

    #[used]
    #[unsafe(link_section = ".init_array")]
    static KEEP_ARGS: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = keep_args;

    extern "C" fn keep_args(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
        ARGC.store(argc, Ordering::Relaxed);
        ARGV.store(argv.cast_mut(), Ordering::Relaxed);
        ENVP.store(envp.cast_mut(), Ordering::Relaxed);
    }

    #[inline(never)]
    pub(super) fn start() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        // Named here so that the linker keeps the object holding the constructor above.
        std::hint::black_box(&KEEP_ARGS);
        STARTED.call_once(|| {
            let (argc, argv, envp) =
                (ARGC.load(Ordering::Relaxed), ARGV.load(Ordering::Relaxed), ENVP.load(Ordering::Relaxed));
            assert!(!argv.is_null(), "the loader gave no argv to this process's constructors");
            // SAFETY: the pointers are the loader's own, valid for the process's life; Go's
            // constructor saves them, starts its runtime on a thread of its own and returns.
            unsafe { GO_CONSTRUCTOR(argc, argv, envp) }
        });
    }
}

/// Elsewhere the loader starts Go's runtime, as a c-archive's constructor does.
#[cfg(all(feature = "mesh", not(target_os = "linux")))]
mod go_runtime {
    pub(super) fn start() {}
}
