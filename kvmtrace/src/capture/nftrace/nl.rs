//! The nf_tables message numbers `--explain-rules` needs, over the host's netlink transport
//! (`crate::host::nl`).
//!
//! Constants are from include/uapi/linux/netfilter/nf_tables.h (Linux 6.x); the numbering of
//! `enum nf_tables_msg_types` counts from NFT_MSG_NEWTABLE = 0, so NFT_MSG_TRACE is 17.

pub use crate::host::nl::{
    attrs, be32, be64, cstr, messages, ne32, Attrs, BatchMsg, Socket, NFGENMSG_LEN,
    NFNLGRP_NFTRACE, NFNL_SUBSYS_NFTABLES, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL,
};
use std::io;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_TRACE: u16 = 17;

/// Full nlmsg type of an nf_tables message.
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A NETLINK_NETFILTER socket, bound to the network namespace of the thread that opened it.
pub fn open() -> io::Result<Socket> {
    Socket::open(crate::host::nl::NETLINK_NETFILTER)
}

/// Dumps every object of `get` (NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, …) in all families;
/// returns the bodies (nfgenmsg + attributes) of the answers.
pub fn dump(sock: &mut Socket, get: u16) -> io::Result<Vec<Vec<u8>>> {
    // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0.
    Ok(sock
        .dump(nft_type(get), &[0, 0, 0, 0])?
        .into_iter()
        .map(|(_, b)| b)
        .collect())
}
