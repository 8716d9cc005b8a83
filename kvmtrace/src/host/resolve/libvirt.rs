//! libvirt's runtime XML (`/run/libvirt/qemu/*.xml`): the domain's name, UUID, QEMU pid,
//! interfaces (`<target dev>`, `<mac address>`) and OpenStack's `<nova:name>`.

/// The value of `name='…'` or `name="…"` in the first `<tag …>` element of `block`.
pub(super) fn xml_attr(block: &str, tag: &str, name: &str) -> Option<String> {
    let start = block.find(&format!("<{tag} "))?;
    let rest = &block[start..];
    let end = rest.find('>')?;
    let el = &rest[..end];
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        if let Some(i) = el.find(&key) {
            let v = &el[i + key.len()..];
            return v.find(q).map(|j| xml_unescape(&v[..j]));
        }
    }
    None
}

/// The text of the first `<tag>…</tag>` of `block`.
pub(super) fn xml_text(block: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let i = block.find(&open)? + open.len();
    let j = block[i..].find(&format!("</{tag}>"))?;
    let t = xml_unescape(block[i..i + j].trim());
    (!t.is_empty()).then_some(t)
}

pub(super) fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `<interface>` blocks of a libvirt domain XML: (tap, mac).
pub fn libvirt_interfaces(xml: &str) -> Vec<(Option<String>, Option<String>)> {
    xml.split("<interface ")
        .skip(1)
        .map(|b| {
            let block = b.split("</interface>").next().unwrap_or(b);
            (
                xml_attr(block, "target", "dev"),
                xml_attr(block, "mac", "address").map(|m| m.to_ascii_lowercase()),
            )
        })
        .collect()
}

/// What a libvirt runtime XML (`/run/libvirt/qemu/NAME.xml`, a `<domstatus>`) says of a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibvirtDomain {
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// OpenStack's instance name (`<nova:name>` in the domain's metadata).
    pub nova_name: Option<String>,
    /// QEMU's pid (`<domstatus pid='…'>`).
    pub pid: Option<u32>,
    pub interfaces: Vec<(Option<String>, Option<String>)>,
}

pub fn libvirt_domain(xml: &str) -> LibvirtDomain {
    let dom = xml.find("<domain").map_or(xml, |i| &xml[i..]);
    LibvirtDomain {
        name: xml_text(dom, "name"),
        uuid: xml_text(dom, "uuid").map(|u| u.to_ascii_lowercase()),
        nova_name: xml_text(dom, "nova:name"),
        pid: xml_attr(xml, "domstatus", "pid").and_then(|p| p.parse().ok()),
        interfaces: libvirt_interfaces(dom),
    }
}
