//! The few nfnetlink pieces `--explain-rules` needs: a NETLINK_NETFILTER socket, attribute
//! building and parsing, an nf_tables batch with per-message acks, and a dump.
//!
//! Constants are from include/uapi/linux/netlink.h, netfilter/nfnetlink.h and
//! netfilter/nf_tables.h (Linux 6.x); the numbering of `enum nf_tables_msg_types` counts from
//! NFT_MSG_NEWTABLE = 0, so NFT_MSG_TRACE is 17.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::Duration;

pub const NETLINK_NETFILTER: i32 = 12;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `enum nfnetlink_groups`: NFNLGRP_NFTRACE.
pub const NFNLGRP_NFTRACE: u32 = 9;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_TRACE: u16 = 17;

pub const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

pub const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, res_id.
pub const NFGENMSG_LEN: usize = 4;

/// Full nlmsg type of an nf_tables message.
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Netlink attributes being built (each padded to 4 bytes, host-order header).
#[derive(Clone, Debug, Default)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    pub fn new() -> Self {
        Attrs(Vec::new())
    }

    pub fn bytes(mut self, ty: u16, payload: &[u8]) -> Self {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    /// A NUL-terminated string (NLA_STRING / NLA_NUL_STRING).
    pub fn str(self, ty: u16, s: &str) -> Self {
        let mut p = s.as_bytes().to_vec();
        p.push(0);
        self.bytes(ty, &p)
    }

    pub fn be32(self, ty: u16, v: u32) -> Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    pub fn nested(self, ty: u16, inner: Attrs) -> Self {
        self.bytes(ty | NLA_F_NESTED, &inner.0)
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

// Attribute parsing is rtnetlink's and nfnetlink's alike: one copy, in the host layer.
pub use crate::host::netlink::{attrs, be32, be64, cstr, ne32};

/// One nfnetlink message: nlmsghdr + nfgenmsg (`res_id` written big-endian) + attributes.
pub fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.0.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(&attrs.0);
    m
}

/// One netlink message out of a received buffer.
#[derive(Debug)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub seq: u32,
    /// After the nlmsghdr.
    pub body: &'a [u8],
}

/// Splits a datagram into its netlink messages; stops at the first malformed header.
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = ne32(&b[0..4])? as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        let m = NlMsg {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            seq: ne32(&b[8..12])?,
            body: &b[NLMSG_HDRLEN..len],
        };
        b = &b[((len + 3) & !3).min(b.len())..];
        Some(m)
    })
}

/// The errno of an NLMSG_ERROR body (0 = ack) and the sequence number of the message it answers.
pub fn error_of(body: &[u8]) -> Option<(i32, u32)> {
    let errno = i32::from_ne_bytes(body.get(..4)?.try_into().ok()?);
    let seq = ne32(body.get(4 + 8..4 + 12)?)?;
    Some((errno, seq))
}

/// One message of an nf_tables batch.
pub struct BatchMsg {
    pub msg: u16,
    pub flags: u16,
    pub family: u8,
    pub attrs: Attrs,
    /// For error messages: what this message does.
    pub what: String,
}

/// A NETLINK_NETFILTER socket, bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NlSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2) has no memory-safety preconditions.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 = the kernel assigns the port id.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Sequence numbers only need to be unique on this socket.
        Ok(NlSocket { fd, seq: 1 })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn setsockopt<T>(&self, level: i32, opt: i32, v: &T) -> io::Result<()> {
        // SAFETY: v points to a live T of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                opt,
                (v as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn join_group(&self, group: u32) -> io::Result<()> {
        self.setsockopt(libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, &group)
    }

    /// A larger receive buffer (SO_RCVBUFFORCE as root, SO_RCVBUF otherwise): trace messages
    /// come in bursts, one per rule a packet matches.
    pub fn set_rcvbuf(&self, bytes: i32) {
        if self
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .is_err()
        {
            let _ = self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes);
        }
    }

    pub fn set_recv_timeout(&self, d: Duration) -> io::Result<()> {
        // Conversions rather than casts to `time_t`/`suseconds_t`: the libc crate marks those
        // aliases deprecated on musl (the static build), and both are 64-bit on x86_64.
        let tv = libc::timeval {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_usec: d.subsec_micros().into(),
        };
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: buf is valid for reads of its length.
        let n = unsafe { libc::send(self.raw(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram; EINTR is retried.
    pub fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `msgs` as one nf_tables transaction (all or nothing) and waits for the kernel's
    /// answer to each. The first error is returned, naming the message it answers.
    pub fn batch(&mut self, msgs: &[BatchMsg]) -> io::Result<()> {
        let res_id = NFNL_SUBSYS_NFTABLES;
        let mut buf = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            self.next_seq(),
            libc::AF_UNSPEC as u8,
            res_id,
            &Attrs::new(),
        );
        let first = self.seq;
        let mut pending = Vec::new();
        for m in msgs {
            let seq = self.next_seq();
            pending.push((seq, m.what.as_str()));
            buf.extend(message(
                nft_type(m.msg),
                m.flags | NLM_F_REQUEST | NLM_F_ACK,
                seq,
                m.family,
                0,
                &m.attrs,
            ));
        }
        buf.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq(),
            libc::AF_UNSPEC as u8,
            res_id,
            &Attrs::new(),
        ));
        let last = self.seq;
        self.send(&buf)?;
        let mut rbuf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = self.recv(&mut rbuf, 0).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(io::ErrorKind::TimedOut, "no answer from nf_tables")
                } else {
                    e
                }
            })?;
            for m in messages(&rbuf[..n]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some((errno, seq)) = error_of(m.body) else {
                    continue;
                };
                if !(first..=last).contains(&seq) {
                    continue; // an answer to an earlier request on this socket
                }
                if errno != 0 {
                    let e = io::Error::from_raw_os_error(-errno);
                    let what = pending
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map_or("the batch", |(_, w)| w);
                    return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
                }
                pending.retain(|(s, _)| *s != seq);
            }
        }
        Ok(())
    }

    /// Dumps every object of `get` (NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, …) in all families;
    /// returns the bodies (nfgenmsg + attributes) of the answers.
    pub fn dump(&mut self, get: u16) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.next_seq();
        let req = message(
            nft_type(get),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            libc::AF_UNSPEC as u8,
            0,
            &Attrs::new(),
        );
        self.send(&req)?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut rbuf, 0)?;
            for m in messages(&rbuf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = error_of(m.body).map_or(0, |(e, _)| e);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(out);
                    }
                    _ => out.push(m.body.to_vec()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding_and_nesting() {
        let inner = Attrs::new().be32(1, 7).str(2, "abc");
        let a = Attrs::new().str(1, "t").nested(3, inner).bytes(4, &[9]);
        let got: Vec<(u16, Vec<u8>)> = attrs(a.as_bytes()).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (1, b"t\0".to_vec()));
        assert_eq!(got[1].0, 3, "the NLA_F_NESTED bit is masked off");
        let nested: Vec<(u16, Vec<u8>)> = attrs(&got[1].1).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(be32(&nested[0].1), Some(7));
        assert_eq!(cstr(&nested[1].1), "abc");
        assert_eq!(got[2], (4, vec![9]));
    }

    #[test]
    fn a_truncated_attribute_ends_the_iteration() {
        let mut b = Attrs::new().be32(1, 1).as_bytes().to_vec();
        b.extend_from_slice(&[40, 0, 2, 0, 1, 2]); // claims 40 bytes, has 6
        assert_eq!(attrs(&b).count(), 1);
    }

    #[test]
    fn a_message_has_the_nlmsghdr_and_nfgenmsg_layout() {
        let m = message(
            nft_type(NFT_MSG_NEWTABLE),
            0x405,
            42,
            1,
            10,
            &Attrs::new().be32(2, 2),
        );
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(ne32(&m[0..4]), Some(28));
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0a00);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x405);
        assert_eq!(ne32(&m[8..12]), Some(42));
        assert_eq!(
            &m[16..20],
            &[1, 0, 0, 10],
            "family inet, version 0, res_id 10 big-endian"
        );
        let parsed: Vec<NlMsg<'_>> = messages(&m).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].seq, 42);
        assert_eq!(parsed[0].body.len(), 12);
    }

    #[test]
    fn an_error_message_gives_errno_and_the_answered_sequence() {
        let mut body = (-1i32).to_ne_bytes().to_vec(); // -EPERM
        body.extend(message(
            nft_type(NFT_MSG_NEWTABLE),
            0,
            7,
            1,
            0,
            &Attrs::new(),
        ));
        assert_eq!(error_of(&body), Some((-1, 7)));
    }
}
