//! Netfilter hooks (full hook set only: a link runs for every packet of the namespace at its
//! hook). aya 0.14 has no BPF_PROG_TYPE_NETFILTER: these live in `classifier/` sections so
//! that aya-obj parses them, and the loader loads them itself as netfilter programs (never as
//! TC). The context is `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff
//! *skb; }` (include/linux/filter.h, 6.18). Must return NF_ACCEPT (1).

use crate::emit::{Extra, NO_EXTRA};
use crate::skb::observe_skb;
use crate::{config, off, rd};
use kvmtrace_common::HookKind;

#[inline(always)]
fn nf_common(ctx: *mut core::ffi::c_void, hook: HookKind) -> i32 {
    // Direct ctx loads (the verifier allows reading both pointers of bpf_nf_ctx): `skb` keeps
    // its BTF type, which btf_load needs.
    // SAFETY: ctx is the netfilter program context.
    let (state, skb) = unsafe {
        let p = ctx as *const u64;
        (
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
        )
    };
    if skb == 0 {
        return 1;
    }
    if config().is_none() {
        return 1;
    }
    let nf_hook: u8 = if state != 0 {
        rd(state + off!(OFF_NF_STATE_HOOK) as u64).unwrap_or(255)
    } else {
        255
    };
    let x = Extra {
        nf_hook,
        ..NO_EXTRA
    };
    observe_skb(hook, skb, &x, None);
    1
}

/// Runs at the first priority of a netfilter hook: the packet entered the hook.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_enter")]
pub extern "C" fn nf_enter(ctx: *mut core::ffi::c_void) -> i32 {
    nf_common(ctx, HookKind::NfEnter)
}

/// Runs at the last priority of a netfilter hook: the packet survived every rule and NAT.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_exit")]
pub extern "C" fn nf_exit(ctx: *mut core::ffi::c_void) -> i32 {
    nf_common(ctx, HookKind::NfExit)
}
