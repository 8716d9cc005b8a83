use super::*;
use std::os::unix::fs::symlink;

struct Fixture {
    dir: PathBuf,
}
impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A fixture tree; kvmtrace "runs" in the named namespace `labhere`, the host's namespace
/// is PID 1's.
fn fixture(tag: &str) -> (Fixture, Roots) {
    let dir = std::env::temp_dir().join(format!("kvmtrace-resolve-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let roots = Roots {
        proc_dir: dir.join("proc"),
        sys_class_net: dir.join("sys"),
        libvirt_run: dir.join("libvirt"),
        pve_qemu_server: dir.join("pve"),
        netns_run: dir.join("netns"),
    };
    for d in [
        &roots.proc_dir,
        &roots.sys_class_net,
        &roots.libvirt_run,
        &roots.pve_qemu_server,
        &roots.netns_run,
    ] {
        fs::create_dir_all(d).unwrap();
    }
    let here = netns(&roots, "labhere");
    for pid in ["self", "1"] {
        fs::create_dir_all(roots.proc_dir.join(pid).join("ns")).unwrap();
    }
    symlink(format!("net:[{here}]"), roots.proc_dir.join("self/ns/net")).unwrap();
    symlink("net:[4026531840]", roots.proc_dir.join("1/ns/net")).unwrap();
    (Fixture { dir }, roots)
}

/// A named namespace (a plain file stands for the bind mount); returns its inode.
fn netns(r: &Roots, name: &str) -> u64 {
    let p = r.netns_run.join(name);
    if !p.exists() {
        fs::write(&p, "").unwrap();
    }
    fs::metadata(&p).unwrap().ino()
}

/// A QEMU in kvmtrace's namespace: its taps show in this namespace's sysfs.
fn qemu(r: &Roots, pid: u32, cmdline: &[&str], taps: &[&str]) {
    qemu_in(r, pid, cmdline, taps, "labhere");
    for t in taps {
        fs::create_dir_all(r.sys_class_net.join(t)).unwrap();
        fs::write(r.sys_class_net.join(t).join("tun_flags"), "0x1002\n").unwrap();
    }
}

/// A QEMU in the named namespace `ns`.
fn qemu_in(r: &Roots, pid: u32, cmdline: &[&str], taps: &[&str], ns: &str) {
    let p = r.proc_dir.join(pid.to_string());
    fs::create_dir_all(p.join("fd")).unwrap();
    fs::create_dir_all(p.join("fdinfo")).unwrap();
    fs::create_dir_all(p.join("ns")).unwrap();
    symlink(format!("net:[{}]", netns(r, ns)), p.join("ns/net")).unwrap();
    fs::write(p.join("cmdline"), cmdline.join("\0") + "\0").unwrap();
    symlink("/dev/null", p.join("fd/0")).unwrap();
    fs::write(p.join("fdinfo/0"), "pos:\t0\nflags:\t02\n").unwrap();
    for (i, t) in taps.iter().enumerate() {
        let fd = (20 + i).to_string();
        symlink("/dev/net/tun", p.join("fd").join(&fd)).unwrap();
        fs::write(
            p.join("fdinfo").join(&fd),
            format!("pos:\t0\nflags:\t0104002\nmnt_id:\t26\niff:\t{t}\n"),
        )
        .unwrap();
    }
}

#[test]
fn resolves_a_qemu_guest_by_name_tap_and_mac() {
    let (_f, r) = fixture("qemu");
    qemu(
        &r,
        4242,
        &[
            "qemu-system-x86_64",
            "-name",
            "guest=web1,debug-threads=on",
            "-netdev",
            "tap,fd=20,id=hostnet0",
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:AB:CD:01",
        ],
        &["vnet7"],
    );
    let by_name = resolve("web1", None, &r).expect("by name");
    assert_eq!(by_name.tap, "vnet7");
    assert_eq!(by_name.pid, Some(4242));
    assert_eq!(by_name.mac.as_deref(), Some("52:54:00:ab:cd:01"));
    assert_eq!(by_name.netns.name.as_deref(), Some("labhere"));
    assert!(by_name.netns.here);
    assert_eq!(
        resolve("vnet7", None, &r).unwrap().name.as_deref(),
        Some("web1")
    );
    assert_eq!(resolve("52:54:00:ab:cd:01", None, &r).unwrap().tap, "vnet7");
    // One NIC: --nic 0 is accepted, anything else names no NIC.
    assert_eq!(resolve("web1", Some("0"), &r).unwrap().tap, "vnet7");
    assert!(matches!(
        resolve("web1", Some("1"), &r),
        Err(ResolveError::NoSuchNic { .. })
    ));
}

#[test]
fn libvirt_xml_names_taps_and_macs() {
    let (_f, r) = fixture("libvirt");
    fs::write(
        r.libvirt_run.join("db2.xml"),
        "<domstatus><domain type='kvm'><name>db2</name><devices>\
         <interface type='network'><mac address='52:54:00:00:00:09'/>\
         <source network='default' bridge='virbr0'/><target dev='vnet3'/>\
         <model type='virtio'/></interface></devices></domain></domstatus>",
    )
    .unwrap();
    fs::create_dir_all(r.sys_class_net.join("vnet3")).unwrap();
    fs::write(r.sys_class_net.join("vnet3/tun_flags"), "0x1002\n").unwrap();
    let v = resolve("db2", None, &r).expect("by libvirt name");
    assert_eq!(v.tap, "vnet3");
    assert_eq!(v.mac.as_deref(), Some("52:54:00:00:00:09"));
    assert!(v.netns.here);
}

#[test]
fn unknown_vm_lists_what_was_found() {
    let (_f, r) = fixture("unknown");
    qemu(&r, 7, &["qemu", "-name", "alpha"], &["tap-a"]);
    qemu_in(&r, 8, &["qemu", "-name", "beta"], &["tap-b"], "otherns");
    fs::create_dir_all(r.sys_class_net.join("lonelytap")).unwrap();
    fs::write(r.sys_class_net.join("lonelytap/tun_flags"), "0x1002\n").unwrap();
    let e = resolve("nosuchvm", None, &r).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("nosuchvm"), "{msg}");
    assert!(msg.contains("alpha") && msg.contains("tap-a"), "{msg}");
    assert!(msg.contains("lonelytap"), "{msg}");
    // The VM of another namespace is counted, not listed as if it could be followed.
    assert!(!msg.contains("beta"), "{msg}");
    assert!(
        msg.contains("1 more NIC(s) in other network namespaces: `kvmtrace list --all`"),
        "{msg}"
    );
    // A bare tap resolves by its name.
    assert_eq!(resolve("lonelytap", None, &r).unwrap().tap, "lonelytap");
}

/// How Proxmox VE's qemu-server starts VM 101 with two NICs.
const PVE_CMDLINE: &[&str] = &[
    "/usr/bin/kvm",
    "-id",
    "101",
    "-name",
    "web1,debug-threads=on",
    "-chardev",
    "socket,id=qmp,path=/var/run/qemu-server/101.qmp,server=on,wait=off",
    "-pidfile",
    "/var/run/qemu-server/101.pid",
    "-netdev",
    "type=tap,id=net0,ifname=tap101i0,script=/var/lib/qemu-server/pve-bridge,downscript=/var/lib/qemu-server/pve-bridgedown,vhost=on",
    "-device",
    "virtio-net-pci,mac=BC:24:11:00:01:00,netdev=net0,bus=pci.0,addr=0x12,id=net0,rx_queue_size=1024",
    "-netdev",
    "type=tap,id=net1,ifname=tap101i1,script=/var/lib/qemu-server/pve-bridge,downscript=/var/lib/qemu-server/pve-bridgedown,vhost=on",
    "-device",
    "virtio-net-pci,mac=BC:24:11:00:01:01,netdev=net1,bus=pci.0,addr=0x13,id=net1",
];

const PVE_CONF: &str = "\
boot: order=scsi0;net0
cores: 2
memory: 2048
name: webfront
net0: virtio=BC:24:11:00:01:00,bridge=vmbr0,firewall=1
net1: e1000=BC:24:11:00:01:01,bridge=vmbr1,tag=20
ostype: l26

[before-upgrade]
name: oldname
net0: virtio=BC:24:11:99:99:99,bridge=vmbr0
";

#[test]
fn a_proxmox_vm_is_found_by_vmid_with_two_nics_and_its_conf_name() {
    let (_f, r) = fixture("pve");
    qemu(&r, 3101, PVE_CMDLINE, &["tap101i0", "tap101i1"]);
    fs::write(r.pve_qemu_server.join("101.conf"), PVE_CONF).unwrap();

    // Two NICs and no --nic: an error that lists both and says how to choose.
    let e = resolve("101", None, &r).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ResolveError::SeveralNics { .. }), "{msg}");
    assert!(
        msg.starts_with(
            "'101' has 2 NICs; kvmtrace follows one tap: choose it with --nic N|TAP|MAC"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("tap101i0") && msg.contains("tap101i1"),
        "{msg}"
    );
    assert!(msg.contains("mac bc:24:11:00:01:01"), "{msg}");
    assert!(msg.ends_with("for example: --nic 0"), "{msg}");

    let v = resolve("101", Some("1"), &r).expect("--nic 1");
    assert_eq!(
        v,
        VmInfo {
            name: Some("webfront".into()),
            pid: Some(3101),
            tap: "tap101i1".into(),
            mac: Some("bc:24:11:00:01:01".into()),
            nic: 1,
            vmid: Some("101".into()),
            uuid: None,
            aliases: vec!["web1".into()],
            netns: Netns {
                inode: Some(netns(&r, "labhere")),
                name: Some("labhere".into()),
                here: true,
            },
            macvtap: false,
        }
    );
    // The conf's name, QEMU's -name, a tap or a MAC as --nic: the same NICs.
    assert_eq!(
        resolve("webfront", Some("tap101i0"), &r)
            .unwrap()
            .mac
            .as_deref(),
        Some("bc:24:11:00:01:00")
    );
    assert_eq!(
        resolve("web1", Some("BC:24:11:00:01:01"), &r).unwrap().tap,
        "tap101i1"
    );
    assert_eq!(resolve("tap101i0", None, &r).unwrap().nic, 0);
    let e = resolve("101", Some("7"), &r).unwrap_err();
    assert!(matches!(e, ResolveError::NoSuchNic { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("--nic 7: '101' has no NIC numbered 7"),
        "{e}"
    );
}

#[test]
fn proxmox_vmid_from_pidfile_or_tap_names_and_conf_forms() {
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(qemu_vmid(&a(PVE_CMDLINE)).as_deref(), Some("101"));
    assert_eq!(
        qemu_vmid(&a(&["kvm", "-pidfile", "/run/qemu-server/2042.pid"])).as_deref(),
        Some("2042")
    );
    assert_eq!(
        qemu_vmid(&a(&["kvm", "-pidfile", "/run/qemu/2042.pid"])),
        None
    );
    assert_eq!(qemu_vmid(&a(&["kvm", "-id", "net0"])), None);
    assert_eq!(pve_tap_nic("tap101i3", "101"), Some(3));
    assert_eq!(pve_tap_nic("tap1010i3", "101"), None);
    let (name, nets) = pve_conf(PVE_CONF);
    assert_eq!(name.as_deref(), Some("webfront"));
    assert_eq!(
        nets,
        vec![
            (0, "bc:24:11:00:01:00".to_string()),
            (1, "bc:24:11:00:01:01".to_string())
        ]
    );
    let (_, nets) = pve_conf("net2: model=virtio,macaddr=BC:24:11:AA:BB:CC,bridge=vmbr0\n");
    assert_eq!(nets, vec![(2, "bc:24:11:aa:bb:cc".to_string())]);

    // No -id and no -pidfile: the taps' names give the VMID, the conf its name and MACs.
    let (_f, r) = fixture("pve-taps");
    qemu(&r, 55, &["kvm", "-name", "x"], &["tap205i0"]);
    fs::write(
        r.pve_qemu_server.join("205.conf"),
        "name: db\nnet0: virtio=BC:24:11:00:02:05,bridge=vmbr0\n",
    )
    .unwrap();
    let v = resolve("205", None, &r).expect("VMID from the tap's name");
    assert_eq!(v.name.as_deref(), Some("db"));
    assert_eq!(v.mac.as_deref(), Some("bc:24:11:00:02:05"));
    assert_eq!(v.nic, 0);
}

/// The runtime XML libvirt keeps for an OpenStack (Nova) instance.
const NOVA_XML: &str = r#"<domstatus state='running' reason='booted' pid='4300'>
  <taint flag='high-privileges'/>
  <domain type='kvm' id='3'>
  <name>instance-0000002a</name>
  <uuid>6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001</uuid>
  <metadata>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:package version="27.1.0"/>
  <nova:name>web-prod-1</nova:name>
  <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
  <nova:owner><nova:user uuid="u1">admin</nova:user></nova:owner>
</nova:instance>
  </metadata>
  <devices>
<interface type='bridge'>
  <mac address='fa:16:3e:5a:7b:01'/>
  <source bridge='qbr3f2a1b4c-5d'/>
  <target dev='tap3f2a1b4c-5d'/>
  <model type='virtio'/>
</interface>
  </devices>
  </domain>
</domstatus>
"#;

#[test]
fn an_openstack_instance_is_found_by_nova_name_domain_name_and_uuid() {
    let (_f, r) = fixture("nova");
    qemu(
        &r,
        4300,
        &[
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=instance-0000002a,debug-threads=on",
            "-uuid",
            "6F1C2E0A-8D4B-4C55-9A3E-2B7D10E4F001",
            "-netdev",
            "tap,fd=31,vhost=on,vhostfd=33,id=hostnet0",
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=fa:16:3e:5a:7b:01",
        ],
        &["tap3f2a1b4c-5d"],
    );
    fs::write(r.libvirt_run.join("instance-0000002a.xml"), NOVA_XML).unwrap();
    let d = libvirt_domain(NOVA_XML);
    assert_eq!(d.nova_name.as_deref(), Some("web-prod-1"));
    assert_eq!(d.pid, Some(4300));
    for q in [
        "web-prod-1",
        "instance-0000002a",
        "6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001",
        "6F1C2E0A-8D4B-4C55-9A3E-2B7D10E4F001",
        "tap3f2a1b4c-5d",
        "fa:16:3e:5a:7b:01",
    ] {
        let v = resolve(q, None, &r).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(v.tap, "tap3f2a1b4c-5d", "{q}");
        assert_eq!(v.name.as_deref(), Some("web-prod-1"), "{q}");
        assert_eq!(v.aliases, vec!["instance-0000002a".to_string()], "{q}");
        assert_eq!(
            v.uuid.as_deref(),
            Some("6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001"),
            "{q}"
        );
        assert_eq!(v.mac.as_deref(), Some("fa:16:3e:5a:7b:01"), "{q}");
        assert_eq!(v.pid, Some(4300), "{q}");
    }
    // Listed once: the XML's interface is the process's NIC.
    assert_eq!(list_vms(&r).len(), 1, "{:?}", list_vms(&r));
}

#[test]
fn vms_of_other_namespaces_are_named_and_not_followed_from_here() {
    let (_f, r) = fixture("netns");
    qemu(&r, 10, &["qemu", "-name", "guest=here1"], &["vnet0"]);
    qemu_in(
        &r,
        11,
        &["qemu", "-name", "guest=far1"],
        &["vnet0"],
        "kt-far",
    );
    qemu_in(
        &r,
        12,
        &["qemu", "-name", "guest=hostvm"],
        &["vnet9"],
        "host",
    );
    // A process of this namespace holding a tap that is not in this namespace's sysfs
    // (it attached the tap from a thread in another namespace).
    qemu_in(&r, 13, &["fakevm"], &["vnet5"], "labhere");
    // The host's namespace is PID 1's: name it `host`, not by a /run/netns entry.
    fs::remove_file(r.netns_run.join("host")).unwrap();
    fs::create_dir_all(r.proc_dir.join("12/ns")).unwrap();
    fs::remove_file(r.proc_dir.join("12/ns/net")).unwrap();
    symlink("net:[4026531840]", r.proc_dir.join("12/ns/net")).unwrap();

    let here: Vec<String> = list_vms(&r).into_iter().map(|v| v.tap).collect();
    assert_eq!(here, vec!["vnet0"]);
    let all = list_all(&r);
    let far = all
        .iter()
        .find(|v| v.pid == Some(11))
        .expect("listed with --all");
    assert!(!far.netns.here);
    assert_eq!(far.netns.to_string(), "kt-far");
    assert_eq!(far.netns.inode, Some(netns(&r, "kt-far")));
    assert!(
        far.to_string().ends_with("netns kt-far (not here)"),
        "{far}"
    );
    let host = all.iter().find(|v| v.pid == Some(12)).unwrap();
    assert_eq!(host.netns.to_string(), "host");
    assert!(!host.netns.here);
    let fake = all.iter().find(|v| v.pid == Some(13)).unwrap();
    assert_eq!(fake.netns, Netns::default());
    assert_eq!(fake.netns.to_string(), "unknown");
    let j = far.to_json();
    assert_eq!(j["netns"], "kt-far");
    assert_eq!(j["followable"], false);

    // The same tap name in two namespaces: this namespace's.
    assert_eq!(resolve("vnet0", None, &r).unwrap().pid, Some(10));
    // A VM that exists only elsewhere: say where, and how to get there.
    let e = resolve("far1", None, &r).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ResolveError::Elsewhere { .. }), "{msg}");
    assert!(
        msg.starts_with("'far1' is in network namespace kt-far, not in this one"),
        "{msg}"
    );
    assert!(
        msg.ends_with("run it there: ip netns exec kt-far kvmtrace …"),
        "{msg}"
    );
    let e = resolve("hostvm", None, &r).unwrap_err().to_string();
    assert!(
        e.ends_with("run it there: kvmtrace … from the host's namespace"),
        "{e}"
    );
}

#[test]
fn a_macvtap_guest_is_found_by_the_char_device_it_holds() {
    let (_f, r) = fixture("macvtap");
    let mv = r.sys_class_net.join("mvtap0");
    fs::create_dir_all(mv.join("macvtap/tap9")).unwrap();
    fs::write(mv.join("macvtap/tap9/dev"), "246:3\n").unwrap();
    fs::write(mv.join("address"), "52:54:00:AA:00:01\n").unwrap();
    fs::create_dir_all(r.sys_class_net.join("mvtap1/macvtap/tap10")).unwrap();
    fs::write(r.sys_class_net.join("mvtap1/macvtap/tap10/dev"), "246:4\n").unwrap();
    // QEMU as libvirt starts it for `<interface type='direct'>`: `-netdev tap,fd=N` on an
    // fd opened from /dev/tapN. A path that cannot be stat'ed here: matched by node name.
    qemu_in(
        &r,
        900,
        &[
            "qemu",
            "-name",
            "guest=direct1",
            "-netdev",
            "tap,fd=25,id=hostnet0",
        ],
        &[],
        "labhere",
    );
    symlink("/dev/kvmtrace-fixture/tap9", r.proc_dir.join("900/fd/25")).unwrap();
    // A process still holding the fd of a deleted macvtap whose minor was reused: not
    // this macvtap.
    qemu_in(&r, 901, &["qemu", "-name", "guest=gone"], &[], "labhere");
    symlink(
        "/dev/kvmtrace-fixture/tap9 (deleted)",
        r.proc_dir.join("901/fd/25"),
    )
    .unwrap();
    // Another holder of the same macvtap (a helper of the VM's): still one NIC.
    qemu_in(&r, 902, &["helper"], &[], "labhere");
    symlink("/dev/kvmtrace-fixture/tap9", r.proc_dir.join("902/fd/30")).unwrap();
    assert!(resolve("gone", None, &r).is_err());
    let v = resolve("mvtap0", None, &r).expect("one NIC, two holders");
    assert_eq!(v.name.as_deref(), Some("direct1"));
    let v = resolve("direct1", None, &r).expect("by name");
    assert_eq!(v.tap, "mvtap0");
    assert!(v.macvtap);
    assert!(v.netns.here);
    // No MAC on the command line: the macvtap's own address.
    assert_eq!(v.mac.as_deref(), Some("52:54:00:aa:00:01"));
    assert!(v.to_string().contains(" macvtap"), "{v}");
    assert_eq!(v.to_json()["macvtap"], true);
    // The macvtap nobody holds is listed as a bare one, and resolves by its name.
    let bare = resolve("mvtap1", None, &r).expect("bare macvtap");
    assert!(bare.macvtap && bare.pid.is_none());
    assert_eq!(list_vms(&r).len(), 3);
    assert_eq!(
        macvtaps(&r.sys_class_net),
        vec![
            Macvtap {
                dev: "246:3".into(),
                node: "tap9".into(),
                netdev: "mvtap0".into()
            },
            Macvtap {
                dev: "246:4".into(),
                node: "tap10".into(),
                netdev: "mvtap1".into()
            }
        ]
    );
}

#[test]
fn qemu_name_forms() {
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        qemu_name(&a(&["-name", "guest=x,debug-threads=on"])).as_deref(),
        Some("x")
    );
    assert_eq!(qemu_name(&a(&["-name", "plain"])).as_deref(), Some("plain"));
    assert_eq!(qemu_name(&a(&["-m", "256"])), None);
    assert_eq!(
        parse_mac("52:54:00:0a:0b:0c"),
        Some([0x52, 0x54, 0, 10, 11, 12])
    );
    assert_eq!(parse_mac("nope"), None);
}
