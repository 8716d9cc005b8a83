//! Kernel facts from BTF (`/sys/kernel/btf/vmlinux`): struct field offsets handed to the eBPF
//! programs, and the names of `enum skb_drop_reason`. Nothing here is hard-coded per kernel.

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use std::collections::HashMap;
use std::path::Path;

/// Default location of the running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Opened kernel BTF.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self> {
        // Mmap: only the few types looked up are parsed (the cached backend parses all of
        // vmlinux, ~130 ms here, most of start-up). Fall back to reading when mmap fails.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .with_context(|| {
                format!(
                    "cannot read kernel BTF at {}: kvmtrace needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y",
                    path.display()
                )
            })?;
        Ok(Self { btf })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self {
            btf: Btf::from_bytes(bytes).map_err(|e| anyhow!("parsing BTF: {e}"))?,
        })
    }

    /// Finds the struct (or union) type called `name`.
    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("BTF has no type {name}: {e}"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("BTF has no struct {name}"))
    }

    /// Strips typedefs and qualifiers until a struct or union is reached.
    fn as_struct(&self, t: Type) -> Option<btf_rs::Struct> {
        let mut t = t;
        for _ in 0..16 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) => {
                    let bt = t.as_btf_type()?;
                    t = self.btf.resolve_chained_type(bt).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset of `field` inside `st`, looking through anonymous structs and unions
    /// (btf-rs reports those as unnamed members: their offset adds to the inner one).
    fn field_in(&self, st: &btf_rs::Struct, field: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).ok();
            if name == field {
                return Some((m.bit_offset() / 8, ty?));
            }
            if name.is_empty() {
                if let Some(inner) = ty.and_then(|t| self.as_struct(t)) {
                    if let Some((off, t)) = self.field_in(&inner, field, depth + 1) {
                        return Some((m.bit_offset() / 8 + off, t));
                    }
                }
            }
        }
        None
    }

    /// Byte offset of a (possibly nested) field: `offset_of("sk_buff", &["dev"])`,
    /// `offset_of("net", &["ns", "inum"])`.
    pub fn offset_of(&self, st: &str, path: &[&str]) -> Result<u32> {
        let mut cur = self.find_struct(st)?;
        let mut total = 0u32;
        for (i, field) in path.iter().enumerate() {
            let (off, ty) = self
                .field_in(&cur, field, 0)
                .ok_or_else(|| anyhow!("struct {st} has no field {}", path[..=i].join(".")))?;
            total += off;
            if i + 1 < path.len() {
                cur = self
                    .as_struct(ty)
                    .ok_or_else(|| anyhow!("{st}.{} is not a struct", path[..=i].join(".")))?;
            }
        }
        Ok(total)
    }

    /// Number of arguments the tracepoint `tp` passes to a tp_btf program: the parameters of
    /// its `btf_trace_<tp>` typedef, a pointer to a function whose first parameter is the
    /// program's context (not an argument).
    pub fn tracepoint_args(&self, tp: &str) -> Result<usize> {
        let name = format!("btf_trace_{tp}");
        let types = self
            .btf
            .resolve_types_by_name(&name)
            .map_err(|e| anyhow!("BTF has no {name}: {e}"))?;
        let mut t = types
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("BTF has no {name}"))?;
        for _ in 0..8 {
            match t {
                Type::FuncProto(f) => return Ok(f.parameters.len().saturating_sub(1)),
                Type::Typedef(_) | Type::Ptr(_) | Type::Const(_) => {
                    let bt = t
                        .as_btf_type()
                        .ok_or_else(|| anyhow!("{name}: untyped link"))?;
                    t = self
                        .btf
                        .resolve_chained_type(bt)
                        .map_err(|e| anyhow!("{name}: {e}"))?;
                }
                _ => break,
            }
        }
        bail!("{name} is not a pointer to a function prototype")
    }

    /// Value → name (without the `SKB_DROP_REASON_` prefix) of `enum skb_drop_reason`.
    pub fn drop_reasons(&self) -> Result<HashMap<u32, String>> {
        let types = self
            .btf
            .resolve_types_by_name("skb_drop_reason")
            .map_err(|e| anyhow!("BTF has no enum skb_drop_reason: {e}"))?;
        let mut out = HashMap::new();
        for t in types {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    let name = self.btf.resolve_name(m).unwrap_or_default();
                    let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
                    out.insert(m.val(), short.to_string());
                }
            }
        }
        if out.is_empty() {
            bail!("enum skb_drop_reason is empty in BTF");
        }
        Ok(out)
    }

    /// The member names of the enum(s) called `enum_name` (one BTF lookup by name): how a
    /// kernel tells what it supports (`enum bpf_attach_type` gains a value with each new kind
    /// of attachment).
    pub fn enum_members(&self, enum_name: &str) -> Vec<String> {
        let Ok(types) = self.btf.resolve_types_by_name(enum_name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in &types {
            match t {
                Type::Enum(e) => out.extend(
                    e.members
                        .iter()
                        .filter_map(|m| self.btf.resolve_name(m).ok()),
                ),
                Type::Enum64(e) => out.extend(
                    e.members
                        .iter()
                        .filter_map(|m| self.btf.resolve_name(m).ok()),
                ),
                _ => {}
            }
        }
        out
    }
}

/// The kernel offsets the eBPF programs need, read from BTF.
/// Offsets of kernel struct fields, taken from BTF at start-up (and of the
/// `fib:fib_table_lookup` record, from its format file). Each is written into the eBPF object's
/// `OFF_*` constant of the same name before it is loaded: the one offset mechanism.
/// `u32::MAX` means "not present on this kernel".
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_dev: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_mac_header: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_nd_net: u32,
    pub net_ns_inum: u32,
    pub nf_state_hook: u32,
    /// `sk_buff._skb_refdst` and `dst_entry.dev` (`u32::MAX`: absent): the device of a
    /// locally made packet that has no `skb->dev` yet (dropped at OUTPUT).
    pub skb_refdst: u32,
    pub dst_dev: u32,
    /// Offsets inside the `fib:fib_table_lookup` tracepoint record (from its format file).
    pub fib_tb_id: u32,
    pub fib_err: u32,
    pub fib_oif: u32,
    pub fib_src: u32,
    pub fib_dst: u32,
    pub fib_gw4: u32,
    pub fib_name: u32,
    pub fib_proto: u32,
    pub fib_sport: u32,
    pub fib_dport: u32,
    /// Offsets inside the `fib6:fib6_table_lookup` record (its `src`, `dst` and `gw` are
    /// 16-byte addresses).
    pub fib6_tb_id: u32,
    pub fib6_err: u32,
    pub fib6_oif: u32,
    pub fib6_src: u32,
    pub fib6_dst: u32,
    pub fib6_gw: u32,
    pub fib6_name: u32,
    pub fib6_proto: u32,
    pub fib6_sport: u32,
    pub fib6_dport: u32,
    /// 1 when the `kfree_skb` tracepoint passes the drop reason (its third argument, Linux
    /// 5.17+), 0 before: the programs then never read that argument, which the verifier
    /// would refuse, and report `KFREE_NO_REASON` instead.
    pub kfree_reason: u32,
}

/// An object loader with every `OFF_*` constant set from `o` (for `follow` and `watch`: one
/// list), and the events ring buffer sized `ring_bytes`.
pub fn loader(o: &Offsets, ring_bytes: u32) -> aya::EbpfLoader<'_> {
    let mut l = aya::EbpfLoader::new();
    l.map_max_entries("EVENTS", ring_bytes);
    for (name, value) in [
        ("OFF_SKB_HEAD", &o.skb_head),
        ("OFF_SKB_NH", &o.skb_network_header),
        ("OFF_SKB_DEV", &o.skb_dev),
        ("OFF_DEV_IFINDEX", &o.dev_ifindex),
        ("OFF_SKB_LEN", &o.skb_len),
        ("OFF_SKB_MH", &o.skb_mac_header),
        ("OFF_DEV_NAME", &o.dev_name),
        ("OFF_DEV_ND_NET", &o.dev_nd_net),
        ("OFF_NET_INUM", &o.net_ns_inum),
        ("OFF_NF_STATE_HOOK", &o.nf_state_hook),
        ("OFF_SKB_REFDST", &o.skb_refdst),
        ("OFF_DST_DEV", &o.dst_dev),
        ("OFF_FIB_TB_ID", &o.fib_tb_id),
        ("OFF_FIB_ERR", &o.fib_err),
        ("OFF_FIB_OIF", &o.fib_oif),
        ("OFF_FIB_SRC", &o.fib_src),
        ("OFF_FIB_DST", &o.fib_dst),
        ("OFF_FIB_GW4", &o.fib_gw4),
        ("OFF_FIB_NAME", &o.fib_name),
        ("OFF_FIB_PROTO", &o.fib_proto),
        ("OFF_FIB_SPORT", &o.fib_sport),
        ("OFF_FIB_DPORT", &o.fib_dport),
        ("OFF_FIB6_TB_ID", &o.fib6_tb_id),
        ("OFF_FIB6_ERR", &o.fib6_err),
        ("OFF_FIB6_OIF", &o.fib6_oif),
        ("OFF_FIB6_SRC", &o.fib6_src),
        ("OFF_FIB6_DST", &o.fib6_dst),
        ("OFF_FIB6_GW", &o.fib6_gw),
        ("OFF_FIB6_NAME", &o.fib6_name),
        ("OFF_FIB6_PROTO", &o.fib6_proto),
        ("OFF_FIB6_SPORT", &o.fib6_sport),
        ("OFF_FIB6_DPORT", &o.fib6_dport),
        ("KFREE_REASON", &o.kfree_reason),
    ] {
        l.override_global(name, value, true);
    }
    l
}

pub fn kernel_offsets(btf: &KernelBtf) -> Result<Offsets> {
    let o = |s: &str, p: &[&str]| btf.offset_of(s, p);
    Ok(Offsets {
        skb_head: o("sk_buff", &["head"])?,
        skb_data: o("sk_buff", &["data"])?,
        skb_len: o("sk_buff", &["len"])?,
        skb_dev: o("sk_buff", &["dev"])?,
        skb_network_header: o("sk_buff", &["network_header"])?,
        skb_transport_header: o("sk_buff", &["transport_header"])?,
        skb_mac_header: o("sk_buff", &["mac_header"])?,
        dev_ifindex: o("net_device", &["ifindex"])?,
        dev_name: o("net_device", &["name"])?,
        // possible_net_t holds `struct net *net` (absent without CONFIG_NET_NS: offset 0).
        dev_nd_net: o("net_device", &["nd_net"])? + o("possible_net_t", &["net"]).unwrap_or(0),
        net_ns_inum: o("net", &["ns", "inum"])?,
        nf_state_hook: o("nf_hook_state", &["hook"]).unwrap_or(0),
        skb_refdst: o("sk_buff", &["_skb_refdst"]).unwrap_or(u32::MAX),
        dst_dev: o("dst_entry", &["dev"]).unwrap_or(u32::MAX),
        fib_tb_id: u32::MAX,
        fib_err: u32::MAX,
        fib_oif: u32::MAX,
        fib_src: u32::MAX,
        fib_dst: u32::MAX,
        fib_gw4: u32::MAX,
        fib_name: u32::MAX,
        fib_proto: u32::MAX,
        fib_sport: u32::MAX,
        fib_dport: u32::MAX,
        fib6_tb_id: u32::MAX,
        fib6_err: u32::MAX,
        fib6_oif: u32::MAX,
        fib6_src: u32::MAX,
        fib6_dst: u32::MAX,
        fib6_gw: u32::MAX,
        fib6_name: u32::MAX,
        fib6_proto: u32::MAX,
        fib6_sport: u32::MAX,
        fib6_dport: u32::MAX,
        // (skb, location) before 5.17; (skb, location, reason[, rx_sk]) since. A kernel
        // whose BTF lacks the typedef has no tp_btf for it either: attaching says so.
        kfree_reason: u32::from(btf.tracepoint_args("kfree_skb").is_ok_and(|n| n >= 3)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        KernelBtf::open(Path::new(VMLINUX_BTF)).ok()
    }

    #[test]
    fn offsets_of_the_running_kernel_are_plausible() {
        let Some(btf) = kernel() else {
            eprintln!("no kernel BTF here: skipped");
            return;
        };
        let o = kernel_offsets(&btf).expect("offsets");
        // sk_buff starts with next/prev (or the rb_node union): dev comes after them.
        assert!(
            o.skb_dev >= 16 && o.skb_dev < 64,
            "skb->dev at {}",
            o.skb_dev
        );
        assert!(o.skb_head > o.skb_dev && o.skb_data == o.skb_head + 8);
        assert!(o.skb_network_header > o.skb_dev);
        assert_eq!(o.skb_mac_header, o.skb_network_header + 2);
        assert!(o.dev_name < o.dev_ifindex || o.dev_ifindex > 0);
        assert_eq!(o.nf_state_hook, 0, "nf_hook_state.hook is its first member");
    }

    #[test]
    fn drop_reason_names_come_from_btf() {
        let Some(btf) = kernel() else { return };
        let r = btf.drop_reasons().expect("reasons");
        assert_eq!(r.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
        assert!(r.values().any(|n| n == "NETFILTER_DROP"));
    }

    /// 6.18 passes (skb, location, reason, rx_sk): the programs read the reason.
    #[test]
    fn the_running_kernels_kfree_skb_passes_its_reason() {
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).expect("kernel BTF");
        assert_eq!(btf.tracepoint_args("kfree_skb").expect("kfree_skb"), 4);
        assert_eq!(btf.tracepoint_args("consume_skb").expect("consume_skb"), 2);
        assert_eq!(kernel_offsets(&btf).expect("offsets").kfree_reason, 1);
        assert!(btf.tracepoint_args("no_such_tracepoint").is_err());
    }

    #[test]
    fn unknown_fields_are_named_in_the_error() {
        let Some(btf) = kernel() else { return };
        let e = btf.offset_of("sk_buff", &["no_such_field"]).unwrap_err();
        assert!(e.to_string().contains("no_such_field"), "{e}");
    }
}
