//! An XDP program that passes every frame, for the lab's switch ports facing
//! devices that run XDP (`Underlay::take_xdp_frames`): loaded straight with
//! `bpf(2)` (two instructions need no object file) and pinned for `ip link
//! set ... xdpdrv pinned`.

use std::{ffi::CString, os::fd::FromRawFd as _, path::PathBuf};

use nix::libc;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `r0 = XDP_PASS; exit`.
const PROGRAM: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of 128 bytes with the
    // command's fields set; the kernel reads no further.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Loads the program and pins it at a fresh path under /sys/fs/bpf; the
/// caller removes the pin once the program is attached.
pub fn pinned() -> PathBuf {
    let license = CString::new("GPL").expect("license");
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt; insns; license.
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((PROGRAM.len() as u64) << 32);
    attr[1] = PROGRAM.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("loading the XDP pass program");
    // SAFETY: a new fd the kernel just handed us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let path = PathBuf::from(format!("/sys/fs/bpf/weir-lab-xdp-pass-{}", crate::unique("p")));
    let c_path = CString::new(path.display().to_string()).expect("pin path");
    let mut attr = [0u64; 16];
    // pathname; bpf_fd.
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32);
    bpf(BPF_OBJ_PIN, &mut attr).expect("pinning the XDP pass program");
    path
}
