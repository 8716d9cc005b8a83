//! The one netlink transport of kvmtrace: a socket (`netlink-sys`), the framing of requests and
//! answers, attribute walking and building, and the nfnetlink pieces on top (`nfgenmsg`, the
//! batch of nf_tables changes with an ack per message, multicast groups).
//!
//! rtnetlink (`host/netlink.rs`), the nftables reader (`host/nftables/`) and `--explain-rules`
//! (`capture/nftrace`) all talk to the kernel through [`Socket`]. A socket belongs to the
//! network namespace of the thread that opened it, whatever thread uses it later.
//!
//! nfnetlink's constants are from include/uapi/linux/netfilter/nfnetlink.h (Linux 6.x).

use std::io;
use std::os::fd::{AsRawFd as _, RawFd};
use std::time::Duration;

// The protocols, message flags and types of netlink.h, as netlink-sys and netlink-packet-core
// name them.
use netlink_packet_core::{NLA_F_NESTED, NLM_F_ACK};
pub use netlink_packet_core::{
    NLMSG_DONE, NLMSG_ERROR, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
pub use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};

/// `enum nfnl_subsys_ids`: NFNL_SUBSYS_NFTABLES.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `enum nfnetlink_groups`: NFNLGRP_NFTRACE.
pub const NFNLGRP_NFTRACE: u32 = 9;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// `struct nlmsghdr`: len, type, flags, seq, pid.
pub const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, res_id.
pub const NFGENMSG_LEN: usize = 4;

/// Iterates netlink attributes: (type without the nested / byte-order flags, payload).
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, payload))
    })
}

/// The payload of the first attribute of type `ty`.
pub fn attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

pub fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn ne32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn be64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

pub fn cstr(p: &[u8]) -> String {
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
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

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One message: nlmsghdr (`nlmsg_pid` 0: the kernel) + `body`.
pub fn frame(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// `struct nfgenmsg` (`res_id` written big-endian) + attributes: the body of every nfnetlink
/// message.
pub fn nfgen_body(family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    let mut b = Vec::with_capacity(NFGENMSG_LEN + attrs.0.len());
    b.push(family);
    b.push(0); // NFNETLINK_V0
    b.extend_from_slice(&res_id.to_be_bytes());
    b.extend_from_slice(&attrs.0);
    b
}

/// One nfnetlink message: nlmsghdr + nfgenmsg + attributes.
pub fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    frame(ty, flags, seq, &nfgen_body(family, res_id, attrs))
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

/// The errno of an NLMSG_ERROR body alone (0 = ack; a body too short to say reads as 0).
fn errno_of(body: &[u8]) -> i32 {
    body.get(..4)
        .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
}

/// One message of an nf_tables batch.
pub struct BatchMsg {
    /// The full message type (`nft_type(NFT_MSG_…)`).
    pub ty: u16,
    pub flags: u16,
    pub family: u8,
    pub attrs: Attrs,
    /// For error messages: what this message does.
    pub what: String,
}

/// A netlink socket of one protocol, bound (the kernel picks the port id), with its own
/// sequence numbers.
#[derive(Debug)]
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
}

impl Socket {
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(protocol)?;
        sock.bind_auto()?;
        // Sequence numbers only need to be unique on this socket.
        Ok(Socket { sock, seq: 1 })
    }

    pub fn raw(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// A socket option netlink-sys has no setter for.
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
        self.sock.add_membership(group)
    }

    /// A larger receive buffer (SO_RCVBUFFORCE as root, SO_RCVBUF otherwise): multicast
    /// messages (nftables traces) come in bursts.
    pub fn set_rcvbuf(&self, bytes: i32) {
        if self
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .is_err()
        {
            let _ = self.sock.set_rx_buf_sz(bytes);
        }
    }

    /// Bounds every receive: a confused kernel must not hang a command.
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
        self.sock.send(buf, 0).map(|_| ())
    }

    /// One datagram into `buf`; EINTR is retried.
    pub fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        loop {
            match self.sock.recv(&mut &mut buf[..], flags) {
                Ok(n) => return Ok(n.min(buf.len())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends one dump request (`body` after the nlmsghdr) and collects every answer to it as
    /// (type, body). A malformed answer ends the dump with what came before it.
    pub fn dump(&mut self, ty: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let seq = self.next_seq();
        self.send(&frame(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, body))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = self.recv(&mut buf, 0)?;
            if n == 0 {
                return Ok(out);
            }
            let mut used = 0;
            for m in messages(&buf[..n]) {
                used = (used + NLMSG_HDRLEN + m.body.len() + 3) & !3;
                if m.seq != seq {
                    continue; // an answer to an earlier request on this socket
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = errno_of(m.body);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(out);
                    }
                    _ => out.push((m.ty, m.body.to_vec())),
                }
            }
            if n.saturating_sub(used) >= NLMSG_HDRLEN {
                return Ok(out); // a header that does not fit: malformed
            }
        }
    }

    /// Sends one request and returns the first answer as (type, body), or the kernel's error.
    pub fn request(&mut self, ty: u16, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let seq = self.next_seq();
        self.send(&frame(ty, NLM_F_REQUEST, seq, body))?;
        let mut buf = vec![0u8; 1 << 16];
        let n = self.recv(&mut buf, 0)?;
        let b = &buf[..n];
        if b.len() < NLMSG_HDRLEN {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short netlink answer",
            ));
        }
        let len = (ne32(&b[0..4]).unwrap_or(0) as usize).min(b.len());
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if ty == NLMSG_ERROR {
            return Err(io::Error::from_raw_os_error(-errno_of(&b[NLMSG_HDRLEN..])));
        }
        Ok((ty, b[NLMSG_HDRLEN..len.max(NLMSG_HDRLEN)].to_vec()))
    }

    /// Sends one change request (`NLM_F_ACK`) and waits for the kernel's answer to it: `Ok`
    /// for its acknowledgement, its errno otherwise.
    pub fn change(&mut self, ty: u16, body: &[u8]) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&frame(ty, NLM_F_REQUEST | NLM_F_ACK, seq, body))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf, 0)?;
            for m in messages(&buf[..n]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                match error_of(m.body) {
                    Some((0, s)) if s == seq => return Ok(()),
                    Some((errno, s)) if s == seq => {
                        return Err(io::Error::from_raw_os_error(-errno))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends `msgs` as one nf_tables transaction (all or nothing) and waits for the kernel's
    /// answer to each. The first error is returned, naming the message it answers.
    pub fn batch(&mut self, msgs: &[BatchMsg]) -> io::Result<()> {
        // BATCH_BEGIN and BATCH_END: no attributes, res_id the subsystem the batch is for.
        let control = |ty: u16, seq: u32| {
            let unspec = libc::AF_UNSPEC as u8;
            message(
                ty,
                NLM_F_REQUEST,
                seq,
                unspec,
                NFNL_SUBSYS_NFTABLES,
                &Attrs::new(),
            )
        };
        let mut buf = control(NFNL_MSG_BATCH_BEGIN, self.next_seq());
        let first = self.seq;
        let mut pending = Vec::new();
        for m in msgs {
            let seq = self.next_seq();
            pending.push((seq, m.what.as_str()));
            buf.extend(message(
                m.ty,
                m.flags | NLM_F_REQUEST | NLM_F_ACK,
                seq,
                m.family,
                0,
                &m.attrs,
            ));
        }
        buf.extend(control(NFNL_MSG_BATCH_END, self.next_seq()));
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
                    let what = pending
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map_or("the batch", |(_, w)| w);
                    return Err(BatchError {
                        errno: -errno,
                        what: what.to_string(),
                    }
                    .into());
                }
                pending.retain(|(s, _)| *s != seq);
            }
        }
        Ok(())
    }
}

/// The kernel refused a message of an nf_tables batch: its errno and which message.
#[derive(Debug)]
pub struct BatchError {
    pub errno: i32,
    pub what: String,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for BatchError {}

impl From<BatchError> for io::Error {
    fn from(e: BatchError) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(e.errno).kind(), e)
    }
}

/// The errno behind a netlink error: the kernel's own, or the one a batch message was refused
/// with (`BatchError` keeps it beside the message it answers).
pub fn errno_in(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BatchError>())
            .map(|b| b.errno)
    })
}

/// One dump on a socket of its own (answers bounded by 5 s: a dump never blocks for long).
pub fn dump(protocol: isize, ty: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let mut s = Socket::open(protocol)?;
    s.set_recv_timeout(Duration::from_secs(5))?;
    s.dump(ty, body)
}

/// One change request on a socket of its own, acknowledged (bounded by 1 s).
pub fn change(protocol: isize, ty: u16, body: &[u8]) -> io::Result<()> {
    let mut s = Socket::open(protocol)?;
    s.set_recv_timeout(Duration::from_secs(1))?;
    s.change(ty, body)
}

/// One request on a socket of its own (its answer bounded by 1 s).
pub fn request(protocol: isize, ty: u16, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let mut s = Socket::open(protocol)?;
    s.set_recv_timeout(Duration::from_secs(1))?;
    s.request(ty, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused batch message keeps its errno (the caller retries on some: --explain-rules
    /// without the owner flag before 5.12) and names the message.
    #[test]
    fn a_batch_error_keeps_its_errno_and_names_the_message() {
        let e: io::Error = BatchError {
            errno: libc::EINVAL,
            what: "add table inet t".into(),
        }
        .into();
        assert_eq!(errno_in(&e), Some(libc::EINVAL));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .starts_with("add table inet t: Invalid argument"),
            "{e}"
        );
        assert_eq!(
            errno_in(&io::Error::from_raw_os_error(libc::EPERM)),
            Some(libc::EPERM)
        );
    }

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
        let m = message(0x0a00, 0x405, 42, 1, 10, &Attrs::new().be32(2, 2));
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
        body.extend(message(0x0a00, 0, 7, 1, 0, &Attrs::new()));
        assert_eq!(error_of(&body), Some((-1, 7)));
        assert_eq!(errno_of(&body), -1);
    }

    #[test]
    fn a_dump_of_this_namespace_links_ends_with_done() {
        // RTM_GETLINK (18) with an ifinfomsg of AF_UNSPEC: every namespace has `lo`.
        let got = dump(NETLINK_ROUTE, 18, &[0u8; 16]).expect("dump");
        assert!(!got.is_empty());
        assert!(got.iter().all(|(t, _)| *t == 16), "RTM_NEWLINK answers");
    }
}
