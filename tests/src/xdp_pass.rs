//! An XDP program that passes every frame, for the lab's switch ports facing
//! devices that run XDP (`Underlay::take_xdp_frames`), and one that drops
//! every frame, the cheapest a device can dispose of a flood (a benchmark's
//! ceiling): loaded straight with `bpf(2)` (two instructions need no object
//! file) and pinned for `ip link set ... xdpdrv pinned`.

use std::{
    ffi::CString,
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use nix::libc;

use crate::netns::{Netns, run_ok};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;

const XDP_DROP: u8 = 1;
const XDP_PASS: u8 = 2;

/// `r0 = verdict; exit`.
const fn program(verdict: u8) -> [u64; 2] {
    [
        u64::from_le_bytes([0xb7, 0, 0, 0, verdict, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ]
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of 128 bytes with the
    // command's fields set; the kernel reads no further.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// A program pinned at a fresh path under /sys/fs/bpf, for `ip link` to
/// attach; the pin is removed on drop (the program lives on while attached).
pub struct Pin(PathBuf);

impl Pin {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Loads the program that passes everything and pins it.
pub fn pinned() -> Pin {
    pinned_returning(XDP_PASS)
}

/// [`pinned`], for the program that drops everything.
pub fn pinned_drop() -> Pin {
    pinned_returning(XDP_DROP)
}

fn pinned_returning(verdict: u8) -> Pin {
    let program = program(verdict);
    let license = CString::new("GPL").expect("license");
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt; insns; license.
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((program.len() as u64) << 32);
    attr[1] = program.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("loading an XDP program");
    // SAFETY: a new fd the kernel just handed us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let path = PathBuf::from(format!(
        "/sys/fs/bpf/weir-lab-xdp-{verdict}-{}",
        crate::unique("p")
    ));
    let c_path = CString::new(path.display().to_string()).expect("pin path");
    let mut attr = [0u64; 16];
    // pathname; bpf_fd.
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32);
    bpf(BPF_OBJ_PIN, &mut attr).expect("pinning an XDP program");
    Pin(path)
}

/// Attaches the pinned program to `device` in `ns` (native XDP).
pub fn attach(ns: &Netns, device: &str, pin: &Pin) {
    // nsenter, not `ip netns exec`, which hides /sys/fs/bpf.
    run_ok(Command::new("nsenter").args([
        &format!("--net={}", ns.path().display()),
        "ip",
        "link",
        "set",
        "dev",
        device,
        "xdpdrv",
        "pinned",
        &pin.path().display().to_string(),
    ]));
}

/// Detaches whatever XDP program `device` in `ns` runs.
pub fn detach(ns: &Netns, device: &str) {
    ns.sh(&format!("ip link set dev {device} xdpdrv off"));
}

/// The frames XDP programs have dropped on `device` in `ns` (a veth's
/// `xdp_drops` of every queue).
pub fn drops(ns: &Netns, device: &str) -> u64 {
    ns.sh(&format!("ethtool -S {device}"))
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|k| k.ends_with("xdp_drops"))
        })
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}
