//! kvmtrace's kernel programs, one file per hook family:
//! - [`tc`]: TC (TCX) programs on the VM's tap and on the devices of its path (bridge, the
//!   route's devices): per-device, so traffic that never crosses those devices never runs them;
//! - [`skb`]: tp_btf programs on the skb tracepoints (`kfree_skb` for drops; the global
//!   `netif_receive_skb`, `net_dev_start_xmit` and `consume_skb` of the full hook set);
//! - [`fib`]: route lookups: `bpf_fib_lookup` from the path devices' TC ingress (path hook
//!   set), or the `fib_table_lookup` tracepoint (full hook set);
//! - [`netfilter`]: BPF netfilter links at the IPv4 hooks (full hook set only);
//! - [`vxlan`]: the inner packet of a VXLAN packet on the underlay;
//! - [`pkt`]: a packet's addresses, parsed headers and per-CPU scratch; [`filter`]: the shared
//!   test "is this packet ours"; [`emit`]: the event written to userspace; [`vxlan`]: the inner
//!   packet of an overlay's outer one.
//!
//! Every program decides in its first few instructions whether a packet belongs to the
//! followed VM and destination, and returns otherwise. A packet is "ours" when
//! - its skb is already in `TRACKED` (seen earlier at another hook, same IP id), or
//! - it goes from the VM (seen on the tap, or from a learned guest address) to the destination, or
//! - it comes from the destination to a learned guest address (after de-NAT), or
//! - it matches a learned post-NAT tuple (`NAT_KEYS`: a reply before de-NAT), or
//! - it is an ICMP error to a guest address about a packet sent to the destination.
//!
//! Kernel struct fields are read through offsets that userspace takes from BTF at start-up,
//! so one object runs on any kernel with BTF. Observe only: every program lets the packet
//! through unchanged.
#![no_std]
#![no_main]
// An atomic add without a compare-and-swap loop (BPF's XADD): the target has no atomic
// read-modify-write in `core`'s atomic types.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go to the map helpers by reference, as the C programs do: passed by
// value, a key would be one more copy on the 512-byte BPF stack in a program that is tight.
#![allow(clippy::needless_borrows_for_generic_args)]

mod emit;
mod fib;
mod filter;
mod netfilter;
mod pkt;
mod skb;
mod tc;
mod vxlan;
mod watch;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use kvmtrace_common::{Config, FlowBudget, GuestList, GuestList6, NatKey, NatOrigin, CNT_MAX};

/// Written by userspace once before attaching; read by every program.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Events for userspace. Written by every program, read by the loader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// skb address → `(ip_id << 16) | direction (DIR_*) | TRACK_*` of packets being followed.
/// Written on first sight, removed at free. The IP id tells a recycled skb address (a packet
/// whose end was not seen: the path hook set has no `consume_skb`) from the packet it carried.
#[map]
static TRACKED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Guest IPv4 addresses learned from frames leaving the tap (slot `LIST_GUESTS`, see
/// `GuestList`), and the destinations a DNAT rule gave followed requests (slot `LIST_DNAT`):
/// a rewritten request leaving a path device is ours only by those.
#[map]
static GUESTS: Array<GuestList> = Array::with_max_entries(2, 0);

/// Guest IPv6 addresses learned the same way (link-local ones excepted), and DNAT targets.
#[map]
static GUESTS6: Array<GuestList6> = Array::with_max_entries(2, 0);

/// Post-NAT tuples of requests (learned when a followed request shows a source other than a
/// guest address): replies arrive under this tuple before conntrack restores the guest's.
/// The value is the guest side of the tuple (from `ORIGIN`), to route a reply before de-NAT.
#[map]
static NAT_KEYS: LruHashMap<NatKey, NatOrigin> = LruHashMap::with_max_entries(4096, 0);

/// skb address → the guest-side address and port of a followed request, written when it
/// leaves the tap, read when its post-NAT tuple is learned. Followed packets only.
#[map]
static ORIGIN: LruHashMap<u64, NatOrigin> = LruHashMap::with_max_entries(4096, 0);

/// skb address → the device a followed packet was received on and routed from (low 32 bits)
/// and its mark then (high 32; path hook set): a packet leaving with a mark set later in
/// PREROUTING is looked up again from there.
#[map]
static ROUTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Per CPU: the packet being parsed (see `filter::Scratch`).
#[map]
static SCRATCH: PerCpuArray<pkt::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Counters (`CNT_*`), per CPU; userspace sums them.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_MAX, 0);

/// Per-flow packet budget: flow key → packets shown and packets only counted. Written here,
/// read by userspace at the end (exact per-flow counts past the budget).
#[map]
static BUDGET: LruHashMap<NatKey, FlowBudget> = LruHashMap::with_max_entries(4096, 0);

/// Kernel stacks of drops, read by userspace when it sees a `Drop` event.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(4096, 0);

/// Per CPU: the followed packet whose route lookup may come next (set when a followed packet
/// is received or leaves PREROUTING; cleared by its next event). Links `fib_table_lookup`,
/// which has no skb, to the packet: only a lookup for the packet's own addresses (either way
/// round: the reverse one is rp_filter's) is attributed, so a packet that ends without
/// another event (queued for a neighbour, delivered locally) does not collect the host's
/// later lookups; and only within `CUR_WINDOW_NS` of the packet's receive (the lookup runs in
/// the same softirq: microseconds later, but a flow's first packet, which creates its
/// conntrack entry, was measured reaching it 100+ µs after the bridge's receive).
#[map]
static CUR: PerCpuArray<Cur> = PerCpuArray::with_max_entries(1, 0);

const CUR_WINDOW_NS: u64 = 1_000_000;

#[derive(Clone, Copy)]
#[repr(C)]
struct Cur {
    skb: u64,
    ts_ns: u64,
    src: pkt::Addr,
    dst: pkt::Addr,
}

/// Declares load-time constants, each `#[no_mangle]` (the loader finds it by name) with the
/// value it has until the loader sets it: `default => NAME, NAME, …`. Read with [`off!`].
macro_rules! load_time {
    ($default:expr => $($name:ident),+ $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            static $name: u32 = $default;
        )+
    };
}

// Every kernel offset the programs read, set by the loader in the frozen .rodata before
// verification (from BTF, and for the `fib_table_lookup` record from its format file;
// `u32::MAX`: absent): the verifier then knows them as constants, so tp_btf and netfilter
// programs read struct fields with plain (fault-safe) BTF loads instead of helper calls.
load_time! {
    0 => OFF_SKB_HEAD, OFF_SKB_NH, OFF_SKB_DEV, OFF_DEV_IFINDEX, OFF_SKB_LEN, OFF_SKB_MH,
        OFF_DEV_NAME, OFF_DEV_ND_NET, OFF_NET_INUM, OFF_NF_STATE_HOOK
}
load_time! {
    u32::MAX => OFF_SKB_REFDST, OFF_DST_DEV,
        OFF_FIB_TB_ID, OFF_FIB_ERR, OFF_FIB_OIF, OFF_FIB_SRC, OFF_FIB_DST, OFF_FIB_GW4,
        OFF_FIB_NAME, OFF_FIB_PROTO, OFF_FIB_SPORT, OFF_FIB_DPORT,
        OFF_FIB6_TB_ID, OFF_FIB6_ERR, OFF_FIB6_OIF, OFF_FIB6_SRC, OFF_FIB6_DST, OFF_FIB6_GW,
        OFF_FIB6_NAME, OFF_FIB6_PROTO, OFF_FIB6_SPORT, OFF_FIB6_DPORT
}

/// `FOLLOW_V4` | `FOLLOW_V6`: the IP versions followed, set by the loader in the frozen .rodata
/// before verification. A constant, not a `Filter` field: the verifier then knows it and
/// removes the code of a version not followed (an IPv4-only run verifies and runs as if IPv6
/// did not exist).
#[unsafe(no_mangle)]
static FOLLOW: u32 = 0;

/// 1 when the `kfree_skb` tracepoint passes the drop reason (Linux 5.17+), set by the loader
/// like `FOLLOW`: before 5.17 the argument does not exist, a program that reads it is refused
/// by the verifier, and with this 0 the verifier never sees the read.
#[unsafe(no_mangle)]
static KFREE_REASON: u32 = 1;

/// The drop reason of a `kfree_skb` tracepoint call, or `KFREE_NO_REASON` on a kernel that
/// passes none.
#[inline(always)]
fn kfree_reason(ctx: &aya_ebpf::programs::BtfTracePointContext) -> u32 {
    if off!(KFREE_REASON) != 0 {
        ctx.arg(2)
    } else {
        kvmtrace_common::KFREE_NO_REASON
    }
}

/// UDP port of the VXLAN overlay on the VM's bridge (0: none), set by the loader like
/// `FOLLOW`: without an overlay the verifier drops the code that looks inside UDP packets.
#[unsafe(no_mangle)]
static VXLAN_PORT: u32 = 0;

/// The VXLAN port to look inside (0: no overlay).
#[inline(always)]
fn vxlan_port() -> u16 {
    off!(VXLAN_PORT) as u16
}

/// Whether IP version `bit` (`FOLLOW_V4` / `FOLLOW_V6`) is followed.
#[inline(always)]
fn follows(bit: u8) -> bool {
    off!(FOLLOW) & bit as u32 != 0
}

/// Reads one of the `OFF_*` constants (a frozen .rodata value the verifier knows).
macro_rules! off {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&crate::$name) }
    };
}
pub(crate) use off;

/// Loads a field of a kernel struct through its BTF-typed pointer (tp_btf arguments,
/// netfilter ctx->skb) at an offset the verifier knows.
#[inline(always)]
fn btf_load<T: Copy>(ptr: u64, off: u32) -> T {
    // SAFETY: `ptr` is a BTF-typed kernel pointer and `off` a constant from .rodata; the
    // verifier turns this into a fault-safe PROBE_MEM load checked against BTF.
    unsafe { core::ptr::read_volatile((ptr as *const u8).add(off as usize) as *const T) }
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        bump(p);
    }
}

/// Adds 1 to a per-CPU counter in one atomic instruction. Per-CPU is not enough alone: a
/// tracing program running in process context can be interrupted on its CPU by a softirq
/// whose TC program counts into the same slot, and a plain load-add-store then loses one of
/// the two increments.
#[inline(always)]
pub(crate) fn bump(p: *mut u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    // SAFETY: `p` is a map value's slot the caller just got from its map.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.filter.enabled != 0)
}

#[inline(always)]
fn rd<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// `N` words of kernel memory at `addr`, zeros where they cannot be read. For more than one
/// word: `rd(..).unwrap_or([0; N])` zeroes through a `memset` call (a byte loop on BPF).
#[inline(always)]
fn rd_words<const N: usize>(addr: u64) -> [u64; N] {
    let mut v = core::mem::MaybeUninit::<[u64; N]>::uninit();
    // SAFETY: a helper call writing N * 8 bytes into `v`; on failure `v` is zeroed word by
    // word before it is read.
    unsafe {
        let rc = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            v.as_mut_ptr() as *mut core::ffi::c_void,
            (N * 8) as u32,
            addr as *const core::ffi::c_void,
        );
        if rc != 0 {
            pkt::zero_words::<N>(v.as_mut_ptr() as *mut u64);
        }
        v.assume_init()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
