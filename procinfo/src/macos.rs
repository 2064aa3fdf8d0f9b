//! libproc, as `ps` and Activity Monitor read it: `proc_pidinfo(PROC_PIDTBSDINFO)` for one
//! process, `proc_listallpids` for all.

use std::mem::{MaybeUninit, size_of};

use super::Info;

pub fn of(pid: u32) -> Option<Info> {
    let mut info = MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the buffer is a `proc_bsdinfo` of the size given, which is what this flavor
    // writes; the call writes nothing beyond `size`.
    let got =
        unsafe { libc::proc_pidinfo(pid as libc::c_int, libc::PROC_PIDTBSDINFO, 0, info.as_mut_ptr().cast(), size) };
    if got != size {
        return None; // no such process, or not ours to see
    }
    // SAFETY: the kernel filled all `size` bytes (checked above); zeroed before, in any case.
    let info = unsafe { info.assume_init() };
    Some(Info {
        pid,
        ppid: info.pbi_ppid,
        ruid: info.pbi_ruid,
        uid: info.pbi_uid,
        gid: info.pbi_gid,
        started: info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec,
        zombie: info.pbi_status == libc::SZOMB,
    })
}

pub fn all() -> Vec<Info> {
    // Asked with no buffer, it says how many there are; room for more, as some may start
    // in between.
    // SAFETY: a null buffer of size 0 only asks for the count.
    let count = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    if count <= 0 {
        return Vec::new();
    }
    let mut pids = vec![0 as libc::pid_t; count as usize + 64];
    let bytes = (pids.len() * size_of::<libc::pid_t>()) as libc::c_int;
    // SAFETY: `pids` has room for `bytes` bytes; the call returns how many pids it wrote.
    let n = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast(), bytes) };
    pids.truncate(n.max(0) as usize);
    pids.into_iter().filter(|&p| p > 0).filter_map(|p| of(p as u32)).collect()
}
