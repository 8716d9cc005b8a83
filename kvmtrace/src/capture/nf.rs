//! BPF netfilter links (kernel 6.4+): a program at the first and at the last priority of each
//! IPv4 hook, so that each hook's entry and exit, and the headers before and after NAT, are
//! seen.
//!
//! aya 0.14 has no program type for them. The programs sit in `classifier/` sections (so that
//! aya-obj parses them and aya creates the maps they use, shared with every other program);
//! here the same object is parsed again, its map references are pointed at aya's map fds, and
//! the instructions are loaded with `bpf(BPF_PROG_LOAD)` as `BPF_PROG_TYPE_NETFILTER` and
//! linked with `BPF_LINK_CREATE` (include/uapi/linux/bpf.h, Linux 6.4+). Links are fds: they
//! go away with the process, even after `kill -9`.

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::Map;
use std::collections::HashSet;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;
const NFPROTO_IPV4: u32 = 2;
const NFPROTO_IPV6: u32 = 10;
/// NF_IP_PRI_FIRST and NF_IP_PRI_LAST are refused for BPF links (net/netfilter/nf_bpf_link.c):
/// one step inside them is the earliest and the latest a link can run.
pub const PRIO_FIRST: i32 = i32::MIN + 1;
pub const PRIO_LAST: i32 = i32::MAX - 1;

/// Loaded netfilter programs and their links. Dropping this detaches them.
pub struct NfLinks {
    /// (name, program fd).
    pub progs: Vec<(String, OwnedFd)>,
    _links: Vec<OwnedFd>,
    pub attached: Vec<String>,
}

fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m)
        | Map::StackTraceMap(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateNfAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
    _rest: [u64; 8],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<RawFd> {
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn load_prog(name: &str, insns: &[aya_obj::generated::bpf_insn]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut pname = [0u8; 16];
    for (d, s) in pname.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_NETFILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: pname,
        expected_attach_type: BPF_NETFILTER,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(first) => {
            // Load again with the verifier log, for an error message worth reading.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            bail!(
                "loading {name} as a netfilter program: {first}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        }
    }
}

fn link(prog: &OwnedFd, pf: u32, hooknum: u32, priority: i32) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateNfAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_NETFILTER,
        pf,
        hooknum,
        priority,
        ..Default::default()
    };
    // SAFETY: a new fd owned by nobody else.
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads `nf_enter` / `nf_exit` from `object` (the same bytes `ebpf` was loaded from) and
/// links them at every hook of the current network namespace: IPv4's, and IPv6's with `v6`.
pub fn attach(object: &[u8], ebpf: &aya::Ebpf, v4: bool, v6: bool) -> Result<NfLinks> {
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let maps = std::mem::take(&mut obj.maps);
    let mut with_fds = Vec::new();
    for (name, m) in &maps {
        let Some(fd) = ebpf.map(name).and_then(map_fd) else {
            continue;
        };
        with_fds.push((name.as_str(), fd, m));
    }
    obj.relocate_maps(with_fds.into_iter(), &text_sections)
        .map_err(|e| anyhow!("relocating maps of the netfilter programs: {e}"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| anyhow!("relocating calls of the netfilter programs: {e}"))?;

    let mut progs = Vec::new();
    let mut links = Vec::new();
    let mut attached = Vec::new();
    for (name, prio) in [("nf_enter", PRIO_FIRST), ("nf_exit", PRIO_LAST)] {
        let p = obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        let f = obj
            .functions
            .get(&p.function_key())
            .ok_or_else(|| anyhow!("code of {name} missing from the eBPF object"))?;
        let fd = load_prog(name, &f.instructions)?;
        let families = [(NFPROTO_IPV4, "IPv4", v4), (NFPROTO_IPV6, "IPv6", v6)];
        for (pf, fam, _) in families.iter().filter(|f| f.2) {
            for hook in 0..5u32 {
                let l = link(&fd, *pf, hook, prio).with_context(|| {
                    format!("linking {name} at {fam} netfilter hook {hook}, priority {prio}")
                })?;
                links.push(l);
            }
        }
        attached.push(format!("{name}@prio {prio}"));
        progs.push((name.to_string(), fd));
    }
    Ok(NfLinks {
        progs,
        _links: links,
        attached,
    })
}
