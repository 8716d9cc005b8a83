//! VXLAN on the underlay: a followed guest's frame leaves the host inside an outer
//! IPv4/UDP/VXLAN packet (RFC 7348) and its reply comes back in one. The encapsulation is
//! pushed onto the same sk_buff (drivers/net/vxlan/vxlan_core.c `vxlan_xmit_one` →
//! `udp_tunnel_xmit_skb`, Linux 6.18; measured: one skb address from the tap to the underlay
//! device and back), so the inner packet is followed exactly as a plain one: these helpers
//! only say where it starts and note the outer header in this CPU's scratch for the event.
//!
//! Cost for foreign traffic: callers ask only when `VXLAN_PORT` is set and the outer
//! packet is UDP; a UDP packet to another port costs one more 2-byte read.

use crate::pkt::scratch;
use crate::rd;
use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};

/// VXLAN header flags byte: the I flag (a valid VNI follows), RFC 7348 §5.
const VXLAN_FLAG_I: u8 = 0x08;
/// Outer UDP header + VXLAN header.
const UDP_VXLAN: usize = 16;
/// Inner Ethernet header.
const ETH: usize = 14;

/// Notes the outer packet (VNI, outer IPv4 addresses) in this CPU's scratch, for `emit`.
#[inline(always)]
fn note(vx: &[u8; 8], saddr: [u8; 4], daddr: [u8; 4]) {
    if let Some(s) = scratch() {
        s.vx_vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
        s.vx_saddr = saddr;
        s.vx_daddr = daddr;
    }
}

/// Is the inner Ethernet type one we parse (IPv4, IPv6)?
#[inline(always)]
fn ip_type(t: [u8; 2]) -> bool {
    t == [0x08, 0x00] || t == [0x86, 0xdd]
}

/// Offset from the outer IPv4 header to the inner IP header, when the outer header `h` (its
/// first 20 bytes, at kernel address `ip`) is a VXLAN packet on the followed port: then the
/// VNI and outer addresses are noted for the event. For tp_btf programs (`skb->head +
/// network_header`).
#[inline(always)]
pub fn skb_inner(ip: u64, h: &[u8; 20]) -> Option<u64> {
    let ihl = ((h[0] & 0x0f) as u64) * 4;
    if ihl < 20 {
        return None;
    }
    // UDP header (8) and VXLAN header (8). Both directions go to the VXLAN port: the source
    // port is a flow hash (vxlan_xmit_one: udp_flow_src_port).
    let u = rd::<[u8; 16]>(ip + ihl)?;
    if u16::from_be_bytes([u[2], u[3]]) != crate::vxlan_port() || u[8] & VXLAN_FLAG_I == 0 {
        return None;
    }
    let off = ihl + UDP_VXLAN as u64;
    let t = rd::<[u8; 2]>(ip + off + 12)?;
    if !ip_type(t) {
        return None;
    }
    let mut vx = [0u8; 8];
    vx.copy_from_slice(&u[8..16]);
    note(
        &vx,
        [h[12], h[13], h[14], h[15]],
        [h[16], h[17], h[18], h[19]],
    );
    Some(off + ETH as u64)
}

/// The offset of the inner Ethernet header of a frame on a path device, when it is an IPv4
/// VXLAN packet on the followed port (the frame's outer IPv4 header at 14); the VNI and outer
/// addresses are noted for the event. For TC programs: read with bpf_skb_load_bytes into this
/// CPU's scratch (the TC programs' stack has no room for the outer headers).
#[inline(always)]
pub fn tc_inner(ctx: &TcContext) -> Option<usize> {
    let s = scratch()?;
    if !load_to(ctx, ETH, s.ip.as_mut_ptr(), 20) {
        return None;
    }
    let ihl = ((s.ip[0] & 0x0f) as usize) * 4;
    if !(20..=60).contains(&ihl) {
        return None;
    }
    // UDP header and VXLAN header, then the inner Ethernet header.
    if !load_to(ctx, ETH + ihl, s.l4.as_mut_ptr(), (UDP_VXLAN + ETH) as u32) {
        return None;
    }
    let u = &s.l4;
    if u16::from_be_bytes([u[2], u[3]]) != crate::vxlan_port()
        || u[8] & VXLAN_FLAG_I == 0
        || !ip_type([u[UDP_VXLAN + 12], u[UDP_VXLAN + 13]])
    {
        return None;
    }
    s.vx_vni = u32::from_be_bytes([0, u[12], u[13], u[14]]);
    s.vx_saddr = [s.ip[12], s.ip[13], s.ip[14], s.ip[15]];
    s.vx_daddr = [s.ip[16], s.ip[17], s.ip[18], s.ip[19]];
    Some(ETH + ihl + UDP_VXLAN)
}

/// Copies `len` bytes of the packet at `off` into `dst` (bpf_skb_load_bytes).
#[inline(always)]
fn load_to(ctx: &TcContext, off: usize, dst: *mut u8, len: u32) -> bool {
    // SAFETY: `dst` points to at least `len` writable bytes (callers pass scratch buffers).
    unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off as u32, dst as *mut _, len) == 0 }
}
